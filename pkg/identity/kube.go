package identity

import (
	"context"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// KubeReviewer reviews tokens with the API server's TokenReview API; its
// credentials need only create on tokenreviews.authentication.k8s.io.
type KubeReviewer struct {
	client kubernetes.Interface
}

// Client-side rate limits of the review client. client-go's defaults (5
// requests per second) would throttle issuance; the API server's own
// priority and fairness protects it.
const (
	reviewQPS   = 1000
	reviewBurst = 2000
)

// NewKubeReviewer uses cfg (in-cluster or a kubeconfig).
func NewKubeReviewer(cfg *rest.Config) (*KubeReviewer, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = reviewQPS, reviewBurst
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &KubeReviewer{client: c}, nil
}

// Review implements Reviewer.
func (k *KubeReviewer) Review(ctx context.Context, token string, audiences []string) (Review, error) {
	tr, err := k.client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Review{}, err
	}
	r := Review{Authenticated: tr.Status.Authenticated, Username: tr.Status.User.Username,
		Audiences: tr.Status.Audiences, Error: tr.Status.Error, Extra: map[string][]string{}}
	for k, v := range tr.Status.User.Extra {
		r.Extra[k] = v
	}
	return r, nil
}
