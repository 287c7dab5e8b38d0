package pluginhost

import (
	"strings"
	"testing"
)

func TestASubscriptionHoldsABoundedBacklog(t *testing.T) {
	s := newLogSub()
	chunk := strings.Repeat("A", 1<<20)
	n := 0
	for s.push(logEvent{Type: "data", Data: chunk, Next: uint64(n + 1)}) == subOpen {
		n++
		if n > 100 {
			t.Fatal("the backlog grows without bound")
		}
	}
	if n*(1<<20) > subscriptionBudget || n < subscriptionBudget/(1<<20)-1 {
		t.Fatalf("lagged after %d events", n)
	}
	// What was queued before the lag is still read, in order; then the state says resume.
	for i := 0; i < n; i++ {
		ev, ok, _, _ := s.take()
		if !ok || ev.Next != uint64(i+1) {
			t.Fatalf("event %d: %v %+v", i, ok, ev.Next)
		}
	}
	if _, ok, state, _ := s.take(); ok || state != subLagged {
		t.Fatalf("after the backlog: %v %v", ok, state)
	}
	// A single event larger than the budget still goes when the queue is empty.
	big := newLogSub()
	if big.push(logEvent{Data: strings.Repeat("B", subscriptionBudget+1)}) != subOpen {
		t.Fatal("an event on an empty queue was refused")
	}
}
