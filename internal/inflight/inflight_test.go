package inflight

import (
	"context"
	"errors"
	"testing"
)

func TestWaitReturnsOnceNothingIsInFlight(t *testing.T) {
	var c Counter
	if err := c.Wait(context.Background()); err != nil {
		t.Fatalf("nothing in flight: %v", err)
	}
	c.Add()
	c.Add()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("two in flight, ctx over: %v; want context.Canceled", err)
	}
	waited := make(chan error)
	go func() { waited <- c.Wait(context.Background()) }()
	c.Done()
	select {
	case err := <-waited:
		t.Fatalf("returned with one in flight: %v", err)
	default:
	}
	c.Done()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	c.Add() // a new round after idle
	c.Done()
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}
