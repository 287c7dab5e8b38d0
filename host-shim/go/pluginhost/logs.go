package pluginhost

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// maxFruitlessResubscribes: a log subscription ended without an end event this many times in a
// row while the plugin stayed up: the plugin refuses to serve it; stop retrying.
const maxFruitlessResubscribes = 5

// errStreamClosed is what Read returns after Close.
var errStreamClosed = errors.New("log stream closed")

// logStream is an io.ReadCloser of stdcopy frames over a resumable log subscription.
type logStream struct {
	p        *plugin
	ctx      context.Context
	req      wireLogRequest
	position *uint64 // the next of the last data event read

	mu    sync.Mutex // guards conn, subID, sub against Close
	conn  *conn
	subID uint64
	sub   *logSub

	buf        []byte
	err        error
	resumes    int // subscriptions made after the first (lag, restart, refusal)
	peak       int // the most bytes any of its subscriptions queued
	fruitless  int
	progressed bool

	closeOnce sync.Once
	closed    chan struct{}
}

// subscribe makes a new subscription, resuming after the last event read (a Tail request
// included: once anything was read, the stream continues exactly after it).
func (s *logStream) subscribe() error {
	req := s.req
	if s.position != nil {
		pos := *s.position
		req.Position = &pos
		req.Tail = false
	}
	sub := newLogSub()
	var id uint64
	_, c, err := s.p.call(s.ctx, "executor_subscribeLogs", []interface{}{req}, retryUntilUnhealthy, func(c *conn) func(json.RawMessage) {
		return func(raw json.RawMessage) {
			// On the reader goroutine, before any later line: the first event finds the
			// subscription registered.
			if json.Unmarshal(raw, &id) == nil {
				c.register(id, sub)
			}
		}
	})
	if err != nil {
		return err
	}
	if id == 0 {
		return fmt.Errorf("plugin for engine %s answered executor_subscribeLogs without a subscription id", s.p.name())
	}
	s.mu.Lock()
	s.conn, s.subID, s.sub = c, id, sub
	s.mu.Unlock()
	s.progressed = false
	select {
	case <-s.closed:
		c.unsubscribe(id)
		return errStreamClosed
	default:
	}
	return nil
}

func (s *logStream) drop() {
	s.mu.Lock()
	c, id := s.conn, s.subID
	s.notePeak(s.sub)
	s.conn, s.subID, s.sub = nil, 0, nil
	s.mu.Unlock()
	if c != nil {
		c.unsubscribe(id)
	}
}

func (s *logStream) Read(b []byte) (int, error) {
	for len(s.buf) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if err := s.fill(); err != nil {
			s.err = err
			s.drop()
		}
	}
	n := copy(b, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// fill puts the next frame into buf, or says why there is none.
func (s *logStream) fill() error {
	for {
		select {
		case <-s.closed:
			return errStreamClosed
		default:
		}
		s.mu.Lock()
		sub, c := s.sub, s.conn
		s.mu.Unlock()
		if sub == nil {
			if err := s.subscribe(); err != nil {
				return err
			}
			s.resumes++
			continue
		}
		ev, ok, state, detail := sub.take()
		if ok {
			s.progressed = true
			next := ev.Next
			s.position = &next
			data, err := base64.StdEncoding.DecodeString(ev.Data)
			if err != nil || len(data) == 0 {
				// Undecodable data counts as empty, as in the Rust host.
				continue
			}
			stream := byte(1)
			if ev.Stream == "stderr" {
				stream = 2
			}
			frame := make([]byte, 8+len(data))
			frame[0] = stream
			binary.BigEndian.PutUint32(frame[4:8], uint32(len(data)))
			copy(frame[8:], data)
			s.buf = frame
			return nil
		}
		switch state {
		case subOpen:
			select {
			case <-sub.notify:
			case <-s.ctx.Done():
				return s.ctx.Err()
			case <-s.closed:
				return errStreamClosed
			}
		case subEnded:
			s.mu.Lock()
			s.notePeak(s.sub)
			s.conn, s.subID, s.sub = nil, 0, nil
			s.mu.Unlock()
			return io.EOF
		case subLagged:
			// Everything before the lag was read; resume right after it.
			s.drop()
		case subLost:
			s.drop()
			s.p.markDead(c.generation, "died during a log stream")
			s.p.logf("plugin for engine %s died during a log stream; resuming on a new plugin", s.p.name())
		case subFailed:
			s.drop()
			if s.progressed {
				s.fruitless = 0
			} else {
				s.fruitless++
			}
			if s.fruitless >= maxFruitlessResubscribes {
				return fmt.Errorf("plugin for engine %s keeps closing the log stream before its end: %s", s.p.name(), detail)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// notePeak keeps the backlog high-water mark of sub; s.mu is held.
func (s *logStream) notePeak(sub *logSub) {
	if sub == nil {
		return
	}
	sub.mu.Lock()
	if sub.peak > s.peak {
		s.peak = sub.peak
	}
	sub.mu.Unlock()
}

// Close ends the stream and unsubscribes.
func (s *logStream) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.drop()
	})
	return nil
}
