// Package bidstrategy holds Bacalhau's bid types and the two strategies an executor is
// (pkg/bidstrategy), as of the executor package this module reproduces.
package bidstrategy

import (
	"context"
	"fmt"

	"executorplugins.example/hostshim/models"
)

// BidStrategyRequest is the job a node is asked to bid on.
type BidStrategyRequest struct {
	NodeID string
	Job    models.Job
}

// BidStrategyResponse says whether to bid, and why.
type BidStrategyResponse struct {
	ShouldBid  bool   `json:"shouldBid"`
	ShouldWait bool   `json:"shouldWait"`
	Reason     string `json:"reason"`
}

// NewBidResponse builds Bacalhau's "this node does [not] ..." reason.
func NewBidResponse(success bool, reason string, args ...interface{}) BidStrategyResponse {
	not := ""
	if !success {
		not = "not "
	}
	return BidStrategyResponse{ShouldBid: success, Reason: "this node does " + not + fmt.Sprintf(reason, args...)}
}

// SemanticBidStrategy decides whether a job can run here at all.
type SemanticBidStrategy interface {
	ShouldBid(ctx context.Context, request BidStrategyRequest) (BidStrategyResponse, error)
}

// ResourceBidStrategy decides whether a job's resources fit here now.
type ResourceBidStrategy interface {
	ShouldBidBasedOnUsage(ctx context.Context, request BidStrategyRequest, usage models.Resources) (BidStrategyResponse, error)
}
