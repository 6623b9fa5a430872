package service

import "testing"

// Replicas on one node's host network share their ports; a lone keyd's
// port is its own.
func TestListenSharesPortsOnlyForReplicas(t *testing.T) {
	a, err := Listen("127.0.0.1:0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen(a.Addr().String(), true)
	if err != nil {
		t.Fatalf("a second replica on the port: %v", err)
	}
	b.Close()
	c, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d, err := Listen(c.Addr().String(), false); err == nil {
		d.Close()
		t.Fatal("a lone keyd's port was shared")
	}
}
