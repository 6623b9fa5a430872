package hsm

// LogoutForTest logs the application out behind the pool's back, as a token
// reset or another component's C_Logout would.
func LogoutForTest(t *Token) error { return t.p.Logout(t.loginSession) }
