package service

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podkey/podkey/internal/keyd/store"
)

// storeClock is the shared store's clock, read through this process's:
// the offset of the database server's time from the local one, measured
// every clockEvery. Replicas sharing a database take issue times and
// revocation cutoffs from it, so one clock orders a credential minted by
// replica A against a revocation taken by replica B, whatever their own
// clocks' skew; what is left is each replica's error in measuring the
// offset, at most half the round trip it was measured over.
type storeClock struct {
	local  func() time.Time
	src    store.Clock
	offset atomic.Int64 // nanoseconds: database time minus local time
	// err is the uncertainty of offset (half its measurement's round
	// trip), nanoseconds.
	err atomic.Int64
}

const (
	// clockEvery is how often a replica measures its offset.
	clockEvery = 2 * time.Second
	// clockMaxError is the largest uncertainty a measurement may have
	// to replace the one in use: a slow round trip says little about
	// when the database read its clock.
	clockMaxError = 50 * time.Millisecond
	// clockWarnOffset is the offset keyd logs: the local clock is
	// wrong (NTP), though keyd's own times stay right.
	clockWarnOffset = time.Second
)

func newStoreClock(src store.Clock, local func() time.Time) *storeClock {
	return &storeClock{local: local, src: src}
}

// Now is the store's time.
func (c *storeClock) Now() time.Time {
	return c.local().Add(time.Duration(c.offset.Load()))
}

// Offset is the store's time minus the local time, and its uncertainty.
func (c *storeClock) Offset() (offset, uncertainty time.Duration) {
	return time.Duration(c.offset.Load()), time.Duration(c.err.Load())
}

// measure reads the store's clock once and keeps the offset unless the
// round trip was slow and the offset in use was measured over a faster
// one.
func (c *storeClock) measure(ctx context.Context) error {
	t0 := c.local()
	db, err := c.src.Clock(ctx)
	t1 := c.local()
	if err != nil {
		return err
	}
	half := t1.Sub(t0) / 2
	if cur := c.err.Load(); cur != 0 && half > clockMaxError && int64(half) > cur {
		return nil
	}
	c.offset.Store(int64(db.Sub(t0.Add(half))))
	c.err.Store(max(int64(half), 1))
	return nil
}

// follow measures the offset every clockEvery until ctx ends.
func (c *storeClock) follow(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(clockEvery)
	defer t.Stop()
	warned, failing := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := c.measure(ctx)
		switch {
		case err == nil:
			failing = false
		case ctx.Err() != nil:
			return
		case !failing:
			failing = true
			log.Warn("reading the store's clock failed; the last offset stays in use", "error", err, "storeDetail", store.Detail(err))
		}
		off, _ := c.Offset()
		if far := off > clockWarnOffset || off < -clockWarnOffset; far && !warned {
			log.Warn("this host's clock is off the database's; keyd uses the database's, fix NTP here", "offset", off)
			warned = true
		} else if !far {
			warned = false
		}
	}
}

// useStoreClock makes the shared store's clock keyd's when the store has
// one and no clock was given: it is measured once here, so the first
// credential already carries the store's time.
func (o *Options) useStoreClock(ctx context.Context) (*storeClock, error) {
	src, ok := o.Store.(store.Clock)
	if !ok || o.Now != nil {
		return nil, nil
	}
	if o.LocalClock == nil {
		o.LocalClock = time.Now
	}
	c := newStoreClock(src, o.LocalClock)
	if err := c.measure(ctx); err != nil {
		return nil, fmt.Errorf("keyd: reading the store's clock: %w", err)
	}
	o.Now = c.Now
	return c, nil
}

// registerClockMetrics exports the offset; an embedded store's clock is
// this host's (0).
func registerClockMetrics(reg prometheus.Registerer, c *storeClock) {
	offset := func() (time.Duration, time.Duration) {
		if c == nil {
			return 0, 0
		}
		return c.Offset()
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_keyd_store_clock_offset_seconds",
			Help: "The shared store's clock minus this host's; keyd takes issue times and revocation cutoffs from the store's."},
			func() float64 { off, _ := offset(); return off.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_keyd_store_clock_uncertainty_seconds",
			Help: "Half the round trip the store clock offset was measured over: how far this replica's times can be from the store's."},
			func() float64 { _, e := offset(); return e.Seconds() }),
	)
}
