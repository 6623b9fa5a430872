package hsm

import (
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// initMu makes a process's initialisations one at a time: two at once
// found the same free slot, and the second label replaced the first.
var initMu sync.Mutex

// InitToken initialises a new token with the label on the module's first
// uninitialised slot and sets its user PIN. It goes through the module
// already loaded by the process (SoftHSM2 does not see tokens that another
// process creates after C_Initialize). For SoftHSM2 development and tests;
// production HSMs are initialised with their vendor's tools.
func InitToken(modulePath, label string, soPIN, userPIN Secret) error {
	if modulePath == "" {
		modulePath = DefaultModule
	}
	initMu.Lock()
	defer initMu.Unlock()
	m, err := loadModule(modulePath)
	if err != nil {
		return err
	}
	defer unloadModule(modulePath)
	m.objects.Lock() // a new token directory appears: no object reads meanwhile
	defer m.objects.Unlock()
	p := m.ctx
	slots, err := p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hsm: list slots: %w", err)
	}
	var free *uint
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			if ti.Label == label {
				return fmt.Errorf("hsm: token %q: %w", label, ErrObjectExists)
			}
			continue
		}
		if free == nil {
			s := s
			free = &s
		}
	}
	if free == nil {
		return fmt.Errorf("hsm: module %q has no uninitialised slot", modulePath)
	}
	if err := p.InitToken(*free, string(soPIN), label); err != nil {
		return fmt.Errorf("hsm: init token %q: %w", label, err)
	}
	sh, err := p.OpenSession(*free, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: init token %q: %w", label, err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_SO, string(soPIN)); err != nil {
		return fmt.Errorf("hsm: init token %q: SO login: %w", label, err)
	}
	defer p.Logout(sh)
	if err := p.InitPIN(sh, string(userPIN)); err != nil {
		return fmt.Errorf("hsm: init token %q: set user PIN: %w", label, err)
	}
	return nil
}
