// Package models holds the wire types a Bacalhau executor exchanges, under Bacalhau's own Go
// names and JSON tags (pkg/models), so that code written against Bacalhau's packages compiles
// against these with only the imports changed.
package models

import (
	"fmt"
	"strings"
)

// RunCommandResult is the outcome of one execution. Note the lower-case "stderr" key: it is
// Bacalhau's.
type RunCommandResult struct {
	// Stdout is the head of the job's standard output, up to MaxStdoutReturnLength.
	STDOUT string `json:"Stdout"`
	// StdoutTruncated is true exactly when the output was longer than what STDOUT holds.
	StdoutTruncated bool `json:"StdoutTruncated"`
	// STDERR is the head of the job's standard error, up to MaxStderrReturnLength.
	STDERR string `json:"stderr"`
	// StderrTruncated is true exactly when the output was longer than what STDERR holds.
	StderrTruncated bool `json:"StderrTruncated"`
	// ExitCode is the job's exit status (128+N when killed by signal N), -1 when unknown.
	ExitCode int `json:"ExitCode"`
	// ErrorMsg is set only for a system failure (cancelled, timed out, out of memory, ...).
	ErrorMsg string `json:"ErrorMsg"`
}

// NewRunCommandResult returns a result with ExitCode -1, as Bacalhau's does.
func NewRunCommandResult() *RunCommandResult {
	return &RunCommandResult{ExitCode: -1}
}

// Resources are the allocated totals of an execution.
type Resources struct {
	// CPU in cores (0.1 = 100m).
	CPU float64 `json:"CPU,omitempty"`
	// Memory in bytes.
	Memory uint64 `json:"Memory,omitempty"`
	// Disk in bytes.
	Disk uint64 `json:"Disk,omitempty"`
	// GPU is a count.
	GPU uint64 `json:"GPU,omitempty"`
	// GPUs are the concrete devices allocated.
	GPUs []GPU `json:"GPUs,omitempty"`
}

// GPUVendor names a GPU's maker.
type GPUVendor string

const (
	GPUVendorNvidia GPUVendor = "NVIDIA"
	GPUVendorAMDATI GPUVendor = "AMD/ATI"
	GPUVendorIntel  GPUVendor = "Intel"
)

// GPU is one device; Memory is in MiB.
type GPU struct {
	Index      uint64
	Name       string
	Vendor     GPUVendor
	Memory     uint64
	PCIAddress string
}

// Network is the kind of network a job gets; it travels as its name.
type Network int

const (
	NetworkDefault Network = iota
	NetworkNone
	NetworkHost
	// NetworkFull is the deprecated name of NetworkHost.
	NetworkFull
	NetworkHTTP
	NetworkBridge
)

var networkNames = []string{"Default", "None", "Host", "Full", "HTTP", "Bridge"}

func (n Network) String() string {
	if n < 0 || int(n) >= len(networkNames) {
		return fmt.Sprintf("Network(%d)", int(n))
	}
	return networkNames[n]
}

// ParseNetwork reads a name, trimmed and in any case.
func ParseNetwork(s string) (Network, error) {
	for i, name := range networkNames {
		if strings.EqualFold(strings.TrimSpace(s), name) {
			return Network(i), nil
		}
	}
	return NetworkDefault, fmt.Errorf("models.Network: unknown type '%s'", s)
}

// MarshalText writes the name.
func (n Network) MarshalText() ([]byte, error) {
	if n < 0 || int(n) >= len(networkNames) {
		return nil, fmt.Errorf("models.Network: unknown type %d", int(n))
	}
	return []byte(networkNames[n]), nil
}

// UnmarshalText reads a name (a number is refused, as Bacalhau's is).
func (n *Network) UnmarshalText(text []byte) error {
	v, err := ParseNetwork(string(text))
	if err != nil {
		return err
	}
	*n = v
	return nil
}

// Port is a port a job publishes.
type Port struct {
	Name        string `json:"Name"`
	Static      int    `json:"Static,omitempty"`
	Target      int    `json:"Target,omitempty"`
	HostNetwork string `json:"HostNetwork,omitempty"`
}

// PortMap is a job's ports.
type PortMap []*Port

// NetworkConfig is the network of an execution.
type NetworkConfig struct {
	Type    Network  `json:"Type"`
	Domains []string `json:"Domains,omitempty"`
	Ports   PortMap  `json:"Ports,omitempty"`
}

// Disabled is true for a job without network.
func (n *NetworkConfig) Disabled() bool {
	return n == nil || n.Type == NetworkNone
}

// ResultPath is an output the job writes at Path, published under Name.
type ResultPath struct {
	Name string `json:"Name"`
	Path string `json:"Path"`
}

// SpecConfig is a typed set of parameters (an engine's, a storage source's).
type SpecConfig struct {
	Type   string                 `json:"Type"`
	Params map[string]interface{} `json:"Params,omitempty"`
}

// IsType compares the type case-insensitively, trimmed.
func (s *SpecConfig) IsType(t string) bool {
	return s != nil && strings.EqualFold(strings.TrimSpace(s.Type), strings.TrimSpace(t))
}

// InputSource is where an input comes from and where the job sees it.
type InputSource struct {
	Source *SpecConfig `json:"Source"`
	Alias  string      `json:"Alias"`
	Target string      `json:"Target"`
}

// ResourcesConfig is what a user asked for, as written ("500m", "512Mb").
type ResourcesConfig struct {
	CPU    string `json:"CPU,omitempty"`
	Memory string `json:"Memory,omitempty"`
	Disk   string `json:"Disk,omitempty"`
	GPU    string `json:"GPU,omitempty"`
}

// TimeoutConfig holds a task's timeouts in seconds.
type TimeoutConfig struct {
	ExecutionTimeout int64 `json:"ExecutionTimeout,omitempty"`
	QueueTimeout     int64 `json:"QueueTimeout,omitempty"`
	TotalTimeout     int64 `json:"TotalTimeout,omitempty"`
}

// Task is one task of a job: what the bid strategies look at.
type Task struct {
	Name         string            `json:"Name"`
	Engine       *SpecConfig       `json:"Engine"`
	Publisher    *SpecConfig       `json:"Publisher,omitempty"`
	Env          map[string]string `json:"Env,omitempty"`
	Meta         map[string]string `json:"Meta,omitempty"`
	InputSources []*InputSource    `json:"InputSources,omitempty"`
	ResultPaths  []*ResultPath     `json:"ResultPaths,omitempty"`
	Resources    *ResourcesConfig  `json:"Resources"`
	Network      *NetworkConfig    `json:"Network"`
	Timeouts     *TimeoutConfig    `json:"Timeouts"`
}

// Job is the part of Bacalhau's job a plugin's bid looks at.
type Job struct {
	ID        string            `json:"ID"`
	Name      string            `json:"Name"`
	Namespace string            `json:"Namespace,omitempty"`
	Type      string            `json:"Type"`
	Priority  int               `json:"Priority"`
	Count     int               `json:"Count"`
	Meta      map[string]string `json:"Meta,omitempty"`
	Labels    map[string]string `json:"Labels,omitempty"`
	Tasks     []*Task           `json:"Tasks"`
}

// Task returns the job's first task (Bacalhau's jobs have one).
func (j *Job) Task() *Task {
	if j == nil || len(j.Tasks) == 0 {
		return nil
	}
	return j.Tasks[0]
}
