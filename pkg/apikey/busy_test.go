package apikey_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/suite"
)

// busyKeyd refuses every Verify as keyd's admission does under load.
type busyKeyd struct{}

func (busyKeyd) Verify(context.Context, *keydv1.VerifyRequest, ...grpc.CallOption) (*keydv1.VerifyResponse, error) {
	st, _ := status.New(codes.ResourceExhausted, "podkey-keyd is at its limit of calls in progress").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(1300 * time.Millisecond)})
	return nil, st.Err()
}

// TestBusyVerifierAsks503WithRetryAfter: when keyd refuses a Verify for
// load, the backend answers 503 verifier_busy with keyd's hint as
// Retry-After (seconds, rounded up), not a refusal of the caller's key.
func TestBusyVerifierAsks503WithRetryAfter(t *testing.T) {
	backend := httptest.NewServer(apikey.Middleware(busyKeyd{}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("a request reached the handler unverified")
	})))
	defer backend.Close()
	k, _ := newWorld(t, suite.Intl).vol.APIKey("ledger-api") // a real key, signing properly
	r, _ := http.NewRequest("GET", backend.URL+"/v1/accounts", nil)
	if err := reqsign.Sign(r, k.Suite, k.ID, k.Secret, time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	_, ref := decode(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || ref.Error != apikey.ReasonBusy || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("%d %+v Retry-After %q", resp.StatusCode, ref, resp.Header.Get("Retry-After"))
	}
}
