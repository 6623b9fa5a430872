// Package trustbundle publishes keyd's CA certificates in a ConfigMap, so
// that podkey-csi and other clients in the cluster can verify keyd without
// an out-of-band copy. CA certificates are public; nothing secret is ever
// written to a Kubernetes object.
package trustbundle

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// Keys of the published ConfigMap.
const (
	KeyIntl = "ca.crt"     // ECDSA P-256 roots (keyd's TLS and intl credentials)
	KeyGM   = "ca-sm2.crt" // SM2 roots (gm credentials)
)

// Publisher keeps a ConfigMap equal to Bundle().
type Publisher struct {
	Client    corev1client.ConfigMapsGetter
	Namespace string
	Name      string
	// Bundle returns the data to publish (key → PEM).
	Bundle func() map[string]string
	// Interval between checks (a CA rotated through keyd is published at
	// the next one). Default one minute.
	Interval time.Duration
	Logger   *slog.Logger
}

// Publish creates or updates the ConfigMap once. It writes only when the
// data differs, so a steady state costs one GET.
func (p *Publisher) Publish(ctx context.Context) (changed bool, err error) {
	want := p.Bundle()
	cms := p.Client.ConfigMaps(p.Namespace)
	cm, err := cms.Get(ctx, p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "podkey-keyd"}},
			Data: want,
		}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create configmap %s/%s: %w", p.Namespace, p.Name, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("get configmap %s/%s: %w", p.Namespace, p.Name, err)
	}
	if maps.Equal(cm.Data, want) {
		return false, nil
	}
	cm = cm.DeepCopy()
	cm.Data = want
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update configmap %s/%s: %w", p.Namespace, p.Name, err)
	}
	return true, nil
}

// Run publishes now and then at every interval until ctx ends, logging
// failures (the API server may be briefly unavailable) and retrying.
func (p *Publisher) Run(ctx context.Context) {
	every := p.Interval
	if every <= 0 {
		every = time.Minute
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	retry := time.Second
	for {
		changed, err := p.Publish(ctx)
		wait := every
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("could not publish the CA bundle", "configmap", p.Namespace+"/"+p.Name, "error", err)
			wait, retry = retry, min(2*retry, every)
		case changed:
			log.Info("published the CA bundle", "configmap", p.Namespace+"/"+p.Name)
			retry = time.Second
		default:
			retry = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
