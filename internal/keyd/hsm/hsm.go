// Package hsm owns podkey's boundary with a PKCS#11 hardware security module:
// loading a module once per process, logging in once, a bounded pool of
// sessions, objects found by label, and recovery (re-login, handle refresh)
// after session or handle errors. Callers see keys only by label; nothing in
// this package ever extracts a sensitive key value.
package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"github.com/podkey/podkey/internal/keyd/hsm/mechanism"
)

// DefaultModule is the SoftHSM2 module shipped by Debian's softhsm2 package,
// podkey's embedded default.
const DefaultModule = "/usr/lib/softhsm/libsofthsm2.so"

// DefaultMaxSessions bounds the session pool when Config.MaxSessions is zero.
const DefaultMaxSessions = 16

// Secret is a string that never prints: PINs travel in this type so that a
// stray %v, a log line or an error cannot reveal them.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return "[redacted]" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Config selects a token. Every field says its default.
type Config struct {
	// ModulePath is the PKCS#11 shared library. Default DefaultModule.
	ModulePath string
	// TokenLabel finds the token; slots are never addressed by number because
	// SoftHSM2 (and others) renumber them. Required.
	TokenLabel string
	// PIN is the user PIN. Required. Read it from a file or the environment
	// (see ReadPIN), never from a command-line value.
	PIN Secret
	// MaxSessions bounds concurrent HSM sessions. Default DefaultMaxSessions.
	MaxSessions int
	// Mechanisms maps podkey's SM operations to vendor mechanism codes for
	// HSMs that implement them natively. Default: none (SM in software under
	// HSM-wrapped keys).
	Mechanisms Mechanisms
}

// Errors callers test for with errors.Is.
var (
	ErrTokenNotFound  = errors.New("token not found")
	ErrPINIncorrect   = errors.New("PIN incorrect")
	ErrObjectNotFound = errors.New("object not found")
	ErrObjectExists   = errors.New("object already exists")
	ErrClosed         = errors.New("hsm token closed")
)

// module is one loaded PKCS#11 library, shared by every Token of the process
// that names the same path: PKCS#11 allows one C_Initialize per module.
type module struct {
	ctx  *pkcs11.Ctx
	refs int
	// objects orders the process's use of the module's token object
	// store: a token object is created or destroyed alone (Lock), while
	// lookups and attribute reads go side by side (RLock). SoftHSM2's
	// file store fails a C_CreateObject or C_GenerateKeyPair that meets a
	// C_FindObjectsInit rescanning the token directory in another thread
	// (CKR_GENERAL_ERROR), and a read of an object another thread is
	// destroying (CKR_ATTRIBUTE_VALUE_INVALID); softhsm/SoftHSMv2#573.
	// Creations and destructions are rare (rotations, enrolments,
	// anchors), so the order costs a hardware HSM nothing it would notice.
	objects *sync.RWMutex
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

func loadModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("hsm: cannot load PKCS#11 module %q", path)
	}
	if err := ctx.Initialize(); err != nil && !isCode(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("hsm: initialize module %q: %w", path, err)
	}
	m := &module{ctx: ctx, refs: 1, objects: &sync.RWMutex{}}
	modules[path] = m
	return m, nil
}

func unloadModule(path string) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m, ok := modules[path]
	if !ok {
		return
	}
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules, path)
	_ = m.ctx.Finalize()
	m.ctx.Destroy()
}

// Token is a logged-in PKCS#11 token with a bounded session pool.
type Token struct {
	cfg  Config
	p    *pkcs11.Ctx
	slot uint
	// objects is the module's object-store order (see module).
	objects *sync.RWMutex
	info    pkcs11.TokenInfo

	loginMu      sync.Mutex
	loginSession pkcs11.SessionHandle

	idle  chan pkcs11.SessionHandle // sessions ready for use
	slots chan struct{}             // one token per open pool session

	handlesMu sync.RWMutex
	handles   map[objectKey]pkcs11.ObjectHandle

	closeOnce sync.Once
	closed    chan struct{}

	errors, relogins atomic.Uint64 // see Stats
}

// Open loads the module (once per process), finds the token by label and
// logs in. The PIN is never logged or included in an error.
func Open(cfg Config) (*Token, error) {
	if cfg.ModulePath == "" {
		cfg.ModulePath = DefaultModule
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.TokenLabel == "" {
		return nil, errors.New("hsm: token label is required")
	}
	if cfg.PIN == "" {
		return nil, errors.New("hsm: PIN is required (from a file or the environment)")
	}
	m, err := loadModule(cfg.ModulePath)
	if err != nil {
		return nil, err
	}
	t := &Token{
		cfg:     cfg,
		p:       m.ctx,
		objects: m.objects,
		idle:    make(chan pkcs11.SessionHandle, cfg.MaxSessions),
		slots:   make(chan struct{}, cfg.MaxSessions),
		handles: map[objectKey]pkcs11.ObjectHandle{},
		closed:  make(chan struct{}),
	}
	if err := t.findSlot(); err != nil {
		unloadModule(cfg.ModulePath)
		return nil, err
	}
	if err := t.login(); err != nil {
		unloadModule(cfg.ModulePath)
		return nil, err
	}
	return t, nil
}

func (t *Token) findSlot() error {
	slots, err := t.p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hsm: list slots: %w", err)
	}
	for _, s := range slots {
		ti, err := t.p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Label == t.cfg.TokenLabel && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			t.slot, t.info = s, ti
			return nil
		}
	}
	return fmt.Errorf("hsm: token %q in module %q: %w", t.cfg.TokenLabel, t.cfg.ModulePath, ErrTokenNotFound)
}

// login opens the long-lived session that holds the token's login state
// (PKCS#11 logs a token out when its last session closes) and logs in.
// forgetLogin drops the login session's handle without closing it: after
// a broken session it is likely dead too, and a module that restarted
// hands its number to a new session, which closing it would end.
func (t *Token) forgetLogin() {
	t.loginMu.Lock()
	t.loginSession = 0
	t.loginMu.Unlock()
}

func (t *Token) login() error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.loginSession != 0 {
		_ = t.p.CloseSession(t.loginSession)
		t.loginSession = 0
	}
	sh, err := t.p.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: open session on token %q: %w", t.cfg.TokenLabel, err)
	}
	err = t.p.Login(sh, pkcs11.CKU_USER, string(t.cfg.PIN))
	switch {
	case err == nil, isCode(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN):
	case isCode(err, pkcs11.CKR_PIN_INCORRECT), isCode(err, pkcs11.CKR_PIN_INVALID), isCode(err, pkcs11.CKR_PIN_LEN_RANGE):
		_ = t.p.CloseSession(sh)
		return fmt.Errorf("hsm: login to token %q: %w", t.cfg.TokenLabel, ErrPINIncorrect)
	default:
		_ = t.p.CloseSession(sh)
		return fmt.Errorf("hsm: login to token %q: %w", t.cfg.TokenLabel, err)
	}
	t.loginSession = sh
	return nil
}

// Label is the token's label.
func (t *Token) Label() string { return t.cfg.TokenLabel }

// ModulePath is the PKCS#11 module the token is reached through.
func (t *Token) ModulePath() string { return t.cfg.ModulePath }

// Mechanisms is the vendor mechanism table in force.
func (t *Token) Mechanisms() Mechanisms { return t.cfg.Mechanisms }

// Info describes the token for status output. It carries nothing secret.
type Info struct {
	Label, Manufacturer, Model, Serial string
	Slot                               uint
	Module                             string
	MaxSessions                        int
}

// Info reports the token's identity.
func (t *Token) Info() Info {
	return Info{
		Label: t.info.Label, Manufacturer: t.info.ManufacturerID, Model: t.info.Model,
		Serial: t.info.SerialNumber, Slot: t.slot, Module: t.cfg.ModulePath, MaxSessions: t.cfg.MaxSessions,
	}
}

// Close returns every session and unloads the module when no other Token
// uses it. Safe to call more than once.
func (t *Token) Close() error {
	t.closeOnce.Do(func() {
		close(t.closed)
		for {
			select {
			case sh := <-t.idle:
				_ = t.p.CloseSession(sh)
				continue
			default:
			}
			break
		}
		t.loginMu.Lock()
		if t.loginSession != 0 {
			_ = t.p.CloseSession(t.loginSession)
		}
		t.loginMu.Unlock()
		unloadModule(t.cfg.ModulePath)
	})
	return nil
}

// Ping checks that a session can be had and the token answers.
func (t *Token) Ping(ctx context.Context) error {
	return t.do(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := t.p.GetSessionInfo(sh)
		return err
	})
}

func isCode(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}

// Mechanisms is the vendor mechanism table (see package mechanism).
type Mechanisms = mechanism.Table

// ParseMechanisms reads a vendor mechanism table.
func ParseMechanisms(data []byte) (Mechanisms, error) { return mechanism.Parse(data) }
