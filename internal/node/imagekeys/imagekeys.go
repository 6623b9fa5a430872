// Package imagekeys is the node's image keyprovider: the gRPC service
// of ocicrypt's keyprovider protocol (keyprovider.KeyProviderService), on a
// unix socket that containerd's decoder (ctd-decoder) reaches through
// OCICRYPT_KEYPROVIDER_CONFIG while it pulls an encrypted image.
//
// For a layer wrapped by podkey's scheme (package imagecrypt) it asks keyd,
// over the node's mTLS connection, to unwrap the image's content key from
// the entry of an image key the node may use, then opens the layer's
// options itself. The content key is kept in locked memory for a short
// time under the image's key set, so the other layers of the image cost no
// keyd call and no HSM operation; it is zeroed when it expires.
package imagekeys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	keyprovider "github.com/containers/ocicrypt/keywrap/keyprovider"
	keyproviderpb "github.com/containers/ocicrypt/utils/keyprovider"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/host/socket"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
)

// Unwrapper is keyd's UnwrapImageKey (keydv1.KeydClient over the node's
// connection).
type Unwrapper interface {
	UnwrapImageKey(ctx context.Context, in *keydv1.UnwrapImageKeyRequest, opts ...grpc.CallOption) (*keydv1.UnwrapImageKeyResponse, error)
}

// Options configure the provider.
type Options struct {
	Keyd Unwrapper
	// NodeName is sent as the claimed node, which keyd trusts only on its
	// local socket in insecure local identity mode.
	NodeName string
	// CacheTTL is how long an unwrapped content key serves further layers
	// of its image; 0 disables the cache.
	CacheTTL time.Duration
	Logger   *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// DefaultCacheTTL covers the pull of one image's layers.
const DefaultCacheTTL = 2 * time.Minute

// maxCached bounds the cache: beyond it the oldest entries are dropped.
const maxCached = 256

type cached struct {
	cek     *secmem.Buffer
	keyID   string
	expires time.Time
}

// Provider serves the keyprovider protocol.
type Provider struct {
	keyproviderpb.UnimplementedKeyProviderServiceServer
	o      Options
	flight singleflight.Group

	mu    sync.Mutex
	cache map[string]*cached
}

// New makes a provider.
func New(o Options) *Provider {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Provider{o: o, cache: map[string]*cached{}}
}

// Serve listens on the unix socket (removing a stale one) and serves until
// ctx ends; the cache is zeroed on the way out.
func (p *Provider) Serve(ctx context.Context, path string) error {
	lis, err := socket.Listen(path, 0o600)
	if err != nil {
		return fmt.Errorf("imagekeys: %w", err)
	}
	g := grpc.NewServer()
	keyproviderpb.RegisterKeyProviderServiceServer(g, p)
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	go p.sweep(ctx)
	p.o.Logger.Info("serving the image keyprovider", "socket", path, "scheme", imagecrypt.Scheme)
	err = g.Serve(lis)
	p.Close()
	return err
}

// WrapKey is not served: images are encrypted with 'podkey image encrypt',
// which needs only the recipients' public keys, never on a node.
func (p *Provider) WrapKey(context.Context, *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, status.Error(codes.Unimplemented, "podkey's node keyprovider only unwraps: encrypt images with 'podkey image encrypt'")
}

// UnWrapKey returns a layer's private options.
func (p *Provider) UnWrapKey(ctx context.Context, in *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	start := p.o.Now()
	var req keyprovider.KeyProviderKeyWrapProtocolInput
	if err := json.Unmarshal(in.GetKeyProviderKeyWrapProtocolInput(), &req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "keyprovider input is not the protocol's JSON: %v", err)
	}
	if req.Operation != keyprovider.OpKeyUnwrap {
		return nil, status.Errorf(codes.InvalidArgument, "operation %q on UnWrapKey", req.Operation)
	}
	opts, keySet, fromCache, err := p.unwrap(ctx, req.KeyUnwrapParams.Annotation)
	if err != nil {
		p.o.Logger.Warn("layer key not unwrapped", "keySet", keySet, "code", status.Code(err).String(), "message", status.Convert(err).Message())
		return nil, err
	}
	defer secmem.Zero(opts)
	out, err := json.Marshal(keyprovider.KeyProviderKeyWrapProtocolOutput{KeyUnwrapResults: keyprovider.KeyUnwrapResults{OptsData: opts}})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	p.o.Logger.Debug("layer key unwrapped", "keySet", keySet, "cached", fromCache, "duration", p.o.Now().Sub(start))
	return &keyproviderpb.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: out}, nil
}

// unwrap opens one layer's blob: the content key from the cache or keyd,
// then the options. The key set is returned for logs.
func (p *Provider) unwrap(ctx context.Context, annotation []byte) (opts []byte, keySet string, fromCache bool, err error) {
	bl, err := imagecrypt.Parse(annotation)
	if err != nil {
		return nil, "", false, status.Error(codes.InvalidArgument, err.Error())
	}
	keySet, err = imagecrypt.KeySet(bl.Suite, bl.Entries)
	if err != nil {
		return nil, "", false, status.Error(codes.InvalidArgument, err.Error())
	}
	if p.o.CacheTTL <= 0 {
		c, err := p.fetch(ctx, bl, keySet)
		if err != nil {
			return nil, keySet, false, err
		}
		defer c.cek.Close()
		opts, err = open(bl, c)
		return opts, keySet, false, err
	}
	for attempt := 0; attempt < 2; attempt++ {
		if opts, found, err := p.openCached(bl, keySet); found {
			return opts, keySet, attempt == 0, err
		}
		// Layers of one image arrive together: one keyd call for them all.
		if _, err, _ := p.flight.Do(keySet, func() (any, error) { return p.fetch(ctx, bl, keySet) }); err != nil {
			return nil, keySet, false, err
		}
	}
	return nil, keySet, false, status.Error(codes.Unavailable, "the image's content key expired before use; pull again")
}

// fetch asks keyd for the content key and caches it.
func (p *Provider) fetch(ctx context.Context, bl *imagecrypt.Blob, keySet string) (*cached, error) {
	req := &keydv1.UnwrapImageKeyRequest{Suite: string(bl.Suite), NodeName: p.o.NodeName, Entries: keydv1.NewImageKeyEntries(bl.Entries)}
	resp, err := p.o.Keyd.UnwrapImageKey(ctx, req)
	if err != nil {
		st := status.Convert(err)
		return nil, status.Errorf(st.Code(), "podkey-keyd refused to unwrap the image key: %s", st.Message())
	}
	buf, err := secmem.New(resp.Cek)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	c := &cached{cek: buf, keyID: resp.KeyId, expires: p.o.Now().Add(p.o.CacheTTL)}
	if p.o.CacheTTL > 0 {
		p.put(keySet, c)
	}
	return c, nil
}

func open(bl *imagecrypt.Blob, c *cached) ([]byte, error) {
	opts, err := imagecrypt.Open(bl, c.cek.Bytes())
	if err != nil {
		if errors.Is(err, imagecrypt.ErrUnwrap) || errors.Is(err, imagecrypt.ErrMalformed) {
			return nil, status.Errorf(codes.InvalidArgument, "layer options of image key %q: %v", c.keyID, err)
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	return opts, nil
}

// openCached opens the layer with the cached content key of its key set,
// under the lock that expiry and eviction take to zero it.
func (p *Provider) openCached(bl *imagecrypt.Blob, keySet string) (opts []byte, found bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.cache[keySet]
	if !ok || !p.o.Now().Before(c.expires) {
		return nil, false, nil
	}
	opts, err = open(bl, c)
	return opts, true, err
}

func (p *Provider) put(keySet string, c *cached) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.cache[keySet]; ok {
		old.cek.Close()
	}
	for len(p.cache) >= maxCached {
		var oldest string
		for k, v := range p.cache {
			if oldest == "" || v.expires.Before(p.cache[oldest].expires) {
				oldest = k
			}
		}
		p.cache[oldest].cek.Close()
		delete(p.cache, oldest)
	}
	p.cache[keySet] = c
}

// sweep zeroes expired content keys.
func (p *Provider) sweep(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.Expire()
		}
	}
}

// Expire zeroes and drops the content keys whose time is up.
func (p *Provider) Expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.o.Now()
	for k, c := range p.cache {
		if !now.Before(c.expires) {
			c.cek.Close()
			delete(p.cache, k)
		}
	}
}

// Cached is the number of content keys held.
func (p *Provider) Cached() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.cache)
}

// Close zeroes every cached content key.
func (p *Provider) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.cache {
		c.cek.Close()
		delete(p.cache, k)
	}
}
