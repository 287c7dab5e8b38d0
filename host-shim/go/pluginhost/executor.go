package pluginhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"executorplugins.example/hostshim/bidstrategy"
	"executorplugins.example/hostshim/executor"
	"executorplugins.example/hostshim/models"
)

// pluginExecutor is executor.Executor over a supervised plugin process.
type pluginExecutor struct {
	p *plugin
}

var _ executor.Executor = (*pluginExecutor)(nil)

func decode(method string, raw json.RawMessage, out interface{}) error {
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("undecodable %s answer: %w", method, err)
	}
	return nil
}

func (e *pluginExecutor) IsInstalled(ctx context.Context) (bool, error) {
	raw, _, err := e.p.call(ctx, "executor_isInstalled", []interface{}{}, retryLimited, nil)
	if err != nil {
		return false, err
	}
	var ok bool
	return ok, decode("executor_isInstalled", raw, &ok)
}

func (e *pluginExecutor) ShouldBid(ctx context.Context, request bidstrategy.BidStrategyRequest) (bidstrategy.BidStrategyResponse, error) {
	var out bidstrategy.BidStrategyResponse
	raw, _, err := e.p.call(ctx, "executor_shouldBid", []interface{}{request}, retryLimited, nil)
	if err != nil {
		return out, err
	}
	return out, decode("executor_shouldBid", raw, &out)
}

func (e *pluginExecutor) ShouldBidBasedOnUsage(ctx context.Context, request bidstrategy.BidStrategyRequest, usage models.Resources) (bidstrategy.BidStrategyResponse, error) {
	var out bidstrategy.BidStrategyResponse
	raw, _, err := e.p.call(ctx, "executor_shouldBidBasedOnUsage", []interface{}{request, usage}, retryLimited, nil)
	if err != nil {
		return out, err
	}
	return out, decode("executor_shouldBidBasedOnUsage", raw, &out)
}

// Start returns once the job runs. A deadline on ctx becomes the request's ExecutionTimeout:
// the plugin stops the job when it passes, whoever is waiting.
func (e *pluginExecutor) Start(ctx context.Context, request *executor.RunCommandRequest) error {
	deadline, has := ctx.Deadline()
	w, err := toWire(request, deadline, has)
	if err != nil {
		return err
	}
	_, _, err = e.p.call(ctx, "executor_start", []interface{}{w}, retryNever, nil)
	return err
}

// Run starts the execution and waits for its result in one round trip. A cancelled ctx
// returns ctx.Err() and leaves the execution running (its deadline, if ctx had one, stops it).
func (e *pluginExecutor) Run(ctx context.Context, request *executor.RunCommandRequest) (*models.RunCommandResult, error) {
	deadline, has := ctx.Deadline()
	w, err := toWire(request, deadline, has)
	if err != nil {
		return nil, err
	}
	raw, _, err := e.p.call(ctx, "executor_run", []interface{}{w}, retryNever, nil)
	var down *DownError
	if errors.As(err, &down) && down.Kind == "interrupted" {
		// Not repeatable as a whole; the wait is, on the plugin that replaced this one and
		// re-attached to the execution.
		res, werr := e.wait(ctx, w.ExecutionID)
		if errors.Is(werr, executor.ErrNotFound) {
			// The start never got as far as the plugin.
			return nil, err
		}
		return res, werr
	}
	if err != nil {
		return nil, err
	}
	var res models.RunCommandResult
	if err := decode("executor_run", raw, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

func (e *pluginExecutor) wait(ctx context.Context, id string) (*models.RunCommandResult, error) {
	raw, _, err := e.p.call(ctx, "executor_wait", []interface{}{id}, retryUntilUnhealthy, nil)
	if err != nil {
		return nil, err
	}
	var res models.RunCommandResult
	if err := decode("executor_wait", raw, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Wait sends exactly one of: the result, or an error (ErrNotFound for an unknown id, ctx.Err()
// when ctx ends first, which leaves the execution running). A plugin that dies meanwhile is
// restarted and the wait re-issued on it.
func (e *pluginExecutor) Wait(ctx context.Context, executionID string) (<-chan *models.RunCommandResult, <-chan error) {
	results := make(chan *models.RunCommandResult, 1)
	errs := make(chan error, 1)
	go func() {
		res, err := e.wait(ctx, executionID)
		if err != nil {
			errs <- err
			return
		}
		results <- res
	}()
	return results, errs
}

func (e *pluginExecutor) Cancel(ctx context.Context, executionID string) error {
	_, _, err := e.p.call(ctx, "executor_cancel", []interface{}{executionID}, retryLimited, nil)
	return err
}

// GetLogStream returns the execution's output as Docker stdcopy frames (stream byte 1 for
// stdout, 2 for stderr, three zero bytes, big-endian u32 size, the bytes): what Bacalhau's log
// consumers read. Without Follow it ends after the history; with Follow when the job has ended
// and everything was read. A plugin restart is invisible: the stream resumes where it stopped,
// nothing lost, nothing repeated. Closing the reader (or ending ctx) unsubscribes.
func (e *pluginExecutor) GetLogStream(ctx context.Context, request executor.LogStreamRequest) (io.ReadCloser, error) {
	s := &logStream{
		p:      e.p,
		ctx:    ctx,
		req:    wireLogRequest{JobID: request.JobID, ExecutionID: request.ExecutionID, Tail: request.Tail, Follow: request.Follow},
		closed: make(chan struct{}),
	}
	// The first subscription is made here so that its errors (ErrNotFound, ...) are this
	// call's; later ones happen inside Read after a restart.
	if err := s.subscribe(); err != nil {
		return nil, err
	}
	return s, nil
}
