package pluginhost

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"executorplugins.example/hostshim/executor"
)

// FieldProblem is one field a request failed validation on.
type FieldProblem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// PluginError is an answer of the plugin: an executor error (Name is its data.code, such as
// "ExecutionNotFound") or a protocol error (Name empty). errors.Is matches the executor
// package's sentinels: ErrAlreadyStarted, ErrAlreadyComplete, ErrNotFound.
type PluginError struct {
	Engine      string
	Method      string
	Code        int
	Name        string
	Message     string
	ExecutionID string
	Problems    []FieldProblem
	// Data is a protocol error's data text (the decoder's message for -32602).
	Data string
}

func (e *PluginError) Error() string {
	if e.Name != "" {
		return e.Message
	}
	msg := e.Message
	if e.Data != "" {
		msg += ": " + e.Data
	}
	return fmt.Sprintf("plugin for engine %s answered %s with a protocol error: %s (%d)", e.Engine, e.Method, msg, e.Code)
}

// Is matches the sentinel of the executor package this error stands for: by data.code, else
// by the numeric code.
func (e *PluginError) Is(target error) bool {
	var name string
	switch target {
	case executor.ErrAlreadyStarted:
		name = "ExecutionAlreadyStarted"
	case executor.ErrAlreadyComplete:
		name = "ExecutionAlreadyComplete"
	case executor.ErrNotFound:
		name = "ExecutionNotFound"
	default:
		return false
	}
	if e.Name != "" {
		return e.Name == name
	}
	return codeNames[e.Code] == name
}

var codeNames = map[int]string{
	-32001: "ExecutionAlreadyStarted",
	-32002: "ExecutionAlreadyComplete",
	-32003: "ExecutionNotFound",
	-32004: "ExecutionAlreadyCancelled",
	-32602: "InvalidParams",
	-32010: "Unsupported",
	-32011: "NotInitialized",
	-32603: "Internal",
}

// ErrShuttingDown is returned by calls made after Close.
var ErrShuttingDown = errors.New("the plugin host is shutting down")

// DownError says the plugin process is gone or could not be reached, as opposed to an answer
// it gave.
type DownError struct {
	Engine string
	// Kind is one of "interrupted" (it died during a call that cannot be repeated safely),
	// "unhealthy" (it crashed too often), "launch" (it could not be started or did not
	// complete its handshake), "refused" (it refused its configuration), "timeout" (it did not
	// answer a prompt call in time; it was killed).
	Kind   string
	Method string
	Detail string
	Limit  time.Duration
	Stderr []string
}

func (e *DownError) Error() string {
	var s string
	switch e.Kind {
	case "interrupted":
		s = fmt.Sprintf("plugin for engine %s died during %s; the outcome is unknown: %s", e.Engine, e.Method, e.Detail)
	case "unhealthy":
		s = fmt.Sprintf("plugin for engine %s is unhealthy: it %s", e.Engine, e.Detail)
	case "refused":
		return fmt.Sprintf("plugin %s refused its configuration: %s", e.Engine, e.Detail)
	case "timeout":
		s = fmt.Sprintf("plugin for engine %s did not answer %s within %v; it was stopped and is restarted on next use", e.Engine, e.Method, e.Limit)
		if e.Method == "executor_start" {
			s += "; whether the execution started is unknown: wait on its id to find out"
		}
		return s
	default:
		s = fmt.Sprintf("plugin %s could not be started: %s", e.Engine, e.Detail)
	}
	if len(e.Stderr) > 0 {
		s += "; last stderr lines:\n" + strings.Join(e.Stderr, "\n")
	}
	return s
}

// TrustError says a plugin file, its directory or its pin does not pass the checks that keep
// anyone but root and the host's user from choosing the code the host runs.
type TrustError struct {
	Path string
	Why  string
}

func (e *TrustError) Error() string { return e.Why }

func untrusted(path, why string) *TrustError {
	return &TrustError{Path: path, Why: fmt.Sprintf("plugin %s is not trusted: %s; only root or the user running the host may be able to change a plugin or a directory above it (chmod go-w, chown)", path, why)}
}
