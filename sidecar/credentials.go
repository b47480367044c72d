package sidecar

import (
	"crypto/tls"
	"errors"

	"handover/health"
	"handover/internal/passcode"
	"handover/stompproxy"
)

// LoginConfig is a login the sidecar presents to the brokers: a service's
// [service.credentials] table (protocol "stomp": every session's upstream
// CONNECT) and the login keys of its [service.check] table (the stomp
// check). The passcode is never in the config file, which is often
// world-readable and kept in version control: it comes from a file (a
// secret mounted beside the sidecar, read again at each use so that a
// rotation needs no reload) or from an environment variable.
type LoginConfig struct {
	Login        string `toml:"login"`
	PasscodeFile string `toml:"passcode_file"`
	PasscodeEnv  string `toml:"passcode_env"`
}

// set reports whether any key of the login is given.
func (l LoginConfig) set() bool { return l != LoginConfig{} }

// passcode is the passcode's source, nil if neither key is given.
func (l LoginConfig) passcode() func() (string, error) {
	switch {
	case l.PasscodeFile != "":
		return passcode.File(l.PasscodeFile)
	case l.PasscodeEnv != "":
		return passcode.Env(l.PasscodeEnv)
	}
	return nil
}

// problems lists what is wrong with the login, each by its key, login
// first. A login must name its passcode's one source (needPasscode: the
// credentials table; a check may log in with a login alone), and the
// passcode must be readable now, so that a missing file stops a start, a
// reload or -check rather than the first client.
func (l LoginConfig) problems(needPasscode bool) []keyProblem {
	var p []keyProblem
	if l.Login == "" {
		p = append(p, keyProblem{"login", errors.New("required with a passcode_file or passcode_env (the login the sidecar sends the brokers)")})
	}
	switch {
	case l.PasscodeFile != "" && l.PasscodeEnv != "":
		p = append(p, keyProblem{"passcode_env", errors.New("give passcode_file or passcode_env, not both")})
	case l.PasscodeFile == "" && l.PasscodeEnv == "":
		if needPasscode {
			p = append(p, keyProblem{"passcode_file", errors.New("a passcode_file or a passcode_env is required (the passcode is never written in this file)")})
		}
	default:
		if _, err := passcode.Read(l.passcode()); err != nil {
			p = append(p, keyProblem{l.key(), err})
		}
	}
	return p
}

// keyProblem is what is wrong with one key.
type keyProblem struct {
	key string
	err error
}

// key is the key the passcode comes from.
func (l LoginConfig) key() string {
	if l.PasscodeFile != "" {
		return "passcode_file"
	}
	return "passcode_env"
}

// credentials is the data path's form of a [service.credentials] table,
// nil when the table is absent.
func (l LoginConfig) credentials() *stompproxy.Credentials {
	if !l.set() {
		return nil
	}
	return &stompproxy.Credentials{Login: l.Login, Passcode: l.passcode()}
}

// options are what the service's checker is made with.
func (c CheckConfig) options(conf *tls.Config) health.CheckOptions {
	return health.CheckOptions{TLS: conf, Login: c.Login, Passcode: c.login().passcode(), Host: c.Host}
}
