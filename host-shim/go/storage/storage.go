// Package storage holds Bacalhau's prepared inputs (pkg/storage): what the node staged and
// where the job sees it.
package storage

import "executorplugins.example/hostshim/models"

// StorageVolumeConnectorType is how a volume reaches the job; Bind is the only kind.
type StorageVolumeConnectorType int

const (
	_ StorageVolumeConnectorType = iota
	StorageVolumeConnectorBind
)

// StorageVolume is a host path bound into the job. Its keys are lower-case, as Bacalhau's.
type StorageVolume struct {
	Type     StorageVolumeConnectorType `json:"type"`
	ReadOnly bool                       `json:"readOnly"`
	Source   string                     `json:"source"`
	Target   string                     `json:"target"`
}

// PreparedStorage is an input the node staged.
type PreparedStorage struct {
	InputSource models.InputSource
	Volume      StorageVolume
}
