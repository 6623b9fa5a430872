package keydv1

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// RetryDelay is the delay keyd asks for in a refusal's RetryInfo (its
// admission refuses calls beyond its bounds with ResourceExhausted and
// one), or 0 when the error carries none.
func RetryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			if h := ri.GetRetryDelay().AsDuration(); h > 0 {
				return h
			}
		}
	}
	return 0
}
