package keyring

// SetRotateKEKStep installs the step hook of RotateKEK (nil removes it).
func SetRotateKEKStep(f func(step string) error) { rotateKEKStep = f }
