package pluginhost

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"executorplugins.example/hostshim/executor"
	"executorplugins.example/hostshim/models"
	"executorplugins.example/hostshim/storage"
)

// protocolVersion is the version of schema/PROTOCOL.md this host speaks.
const protocolVersion = "1"

// maxMessage is the protocol's per-message limit, newline excluded.
const maxMessage = 16 << 20

// wireRequest is RunCommandRequest as it travels: Bacalhau's keys plus the deadline.
type wireRequest struct {
	JobID            string
	ExecutionID      string
	Resources        *models.Resources
	Network          *models.NetworkConfig
	Outputs          []*models.ResultPath
	Inputs           []storage.PreparedStorage
	ResultsDir       string
	EngineParams     *models.SpecConfig
	OutputLimits     executor.OutputLimits
	ExecutionTimeout float64 `json:",omitempty"`
}

// toWire copies the request; a deadline becomes ExecutionTimeout (seconds from now). A deadline
// already passed is context.DeadlineExceeded's text, as Bacalhau's would be.
func toWire(r *executor.RunCommandRequest, deadline time.Time, hasDeadline bool) (*wireRequest, error) {
	if r == nil {
		return nil, fmt.Errorf("the request is nil")
	}
	w := &wireRequest{
		JobID: r.JobID, ExecutionID: r.ExecutionID, Resources: r.Resources, Network: r.Network,
		Outputs: r.Outputs, Inputs: r.Inputs, ResultsDir: r.ResultsDir, EngineParams: r.EngineParams,
		OutputLimits: r.OutputLimits,
	}
	if hasDeadline {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, context.DeadlineExceeded
		}
		// At least a millisecond: 0 means no deadline on the wire.
		w.ExecutionTimeout = math.Max(left.Seconds(), 0.001)
	}
	return w, nil
}

// wireLogRequest is LogStreamRequest plus the resume position.
type wireLogRequest struct {
	JobID       string  `json:",omitempty"`
	ExecutionID string  `json:"ExecutionID"`
	Tail        bool    `json:"Tail"`
	Follow      bool    `json:"Follow"`
	Position    *uint64 `json:",omitempty"`
}

type hostInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

type initializeParams struct {
	ProtocolVersions []string               `json:"protocolVersions"`
	Host             hostInfo               `json:"host"`
	Config           map[string]interface{} `json:"config,omitempty"`
}

// InitializeResult is a plugin's answer to the handshake: which engine it serves and what it
// can enforce on this machine.
type InitializeResult struct {
	ProtocolVersion string `json:"protocolVersion"`
	Engine          string `json:"engine"`
	Plugin          struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"plugin"`
	Capabilities json.RawMessage `json:"capabilities"`
}

// logEvent is one executor_logs event.
type logEvent struct {
	Type      string `json:"type"`
	Stream    string `json:"stream"`
	Timestamp string `json:"timestamp"`
	Data      string `json:"data"`
	Offset    uint64 `json:"offset"`
	Next      uint64 `json:"next"`
}

// rpcError is a JSON-RPC error object.
type rpcError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

type errorData struct {
	Code        string         `json:"code"`
	Component   string         `json:"component"`
	ExecutionID string         `json:"executionId"`
	Problems    []FieldProblem `json:"problems"`
}

func (e *rpcError) toError(engine, method string) *PluginError {
	pe := &PluginError{Engine: engine, Method: method, Code: e.Code, Message: e.Message}
	var d errorData
	if len(e.Data) > 0 && e.Data[0] == '{' && json.Unmarshal(e.Data, &d) == nil && d.Code != "" {
		pe.Name, pe.ExecutionID, pe.Problems = d.Code, d.ExecutionID, d.Problems
		return pe
	}
	var s string
	if json.Unmarshal(e.Data, &s) == nil {
		pe.Data = s
	}
	return pe
}

// incoming is any line from the plugin, decoded far enough to route it.
type incoming struct {
	ID     json.RawMessage `json:"id"`
	Method *string         `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *rpcError       `json:"error"`
	Params json.RawMessage `json:"params"`
}

type logNotification struct {
	Subscription json.Number     `json:"subscription"`
	Result       *logEvent       `json:"result"`
	Error        json.RawMessage `json:"error"`
}

func (e *rpcError) Error() string { return fmt.Sprintf("%s (%d)", e.Message, e.Code) }
