// Package provider holds Bacalhau's registry interfaces (pkg/lib/provider).
package provider

import "context"

// Providable is something a Provider can check for installation.
type Providable interface {
	IsInstalled(context.Context) (bool, error)
}

// Provider returns a value by key.
type Provider[Value Providable] interface {
	Get(context.Context, string) (Value, error)
	Has(context.Context, string) bool
	Keys(context.Context) []string
}
