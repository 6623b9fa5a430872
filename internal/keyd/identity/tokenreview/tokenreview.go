// Package tokenreview is identity.Reviewer on the Kubernetes TokenReview
// API. It is keyd's only use of a typed Kubernetes client for identity, kept
// apart so that what does not review tokens does not link it.
package tokenreview

import (
	"context"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"

	"github.com/podkey/podkey/internal/keyd/identity"
)

// Reviewer reviews tokens with the API server's TokenReview API; its
// credentials need only create on tokenreviews.authentication.k8s.io.
type Reviewer struct {
	client authv1client.TokenReviewsGetter
}

// Client-side rate limits of the review client. client-go's defaults (5
// requests per second) would throttle issuance; the API server's own
// priority and fairness protects it.
const (
	reviewQPS   = 1000
	reviewBurst = 2000
)

// New uses cfg (in-cluster or a kubeconfig).
func New(cfg *rest.Config) (*Reviewer, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = reviewQPS, reviewBurst
	}
	c, err := authv1client.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Reviewer{client: c}, nil
}

// Review implements identity.Reviewer.
func (k *Reviewer) Review(ctx context.Context, token string, audiences []string) (identity.Review, error) {
	tr, err := k.client.TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return identity.Review{}, err
	}
	r := identity.Review{Authenticated: tr.Status.Authenticated, Username: tr.Status.User.Username,
		Audiences: tr.Status.Audiences, Error: tr.Status.Error, Extra: map[string][]string{}, Method: "tokenreview"}
	for k, v := range tr.Status.User.Extra {
		r.Extra[k] = v
	}
	return r, nil
}
