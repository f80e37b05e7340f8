package cmdutil

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// EnvPrefix starts the name of every environment variable a flag can come from.
const EnvPrefix = "GATEHOUSE_"

// EnvName is the environment variable for a flag: GATEHOUSE_ and the flag's
// name in upper case with - as _ (--password-file: GATEHOUSE_PASSWORD_FILE).
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// FlagsFromEnv sets every flag of fs that was not given on the command line
// from its environment variable (EnvName) in environ (os.Environ's form),
// when that is set: the command line wins over the environment, the
// environment over the default. Slice flags take a comma-separated list, as
// on the command line. Call it after parsing.
//
// A typo must not be silently ignored: a value the flag refuses, and a
// GATEHOUSE_ variable that names no flag of fs, are errors naming the
// variable. The variables of the flags named in others (flags fs inherits
// but the command does not use, whose variables other commands read from
// the same environment) are neither read nor refused. Only a refused
// value is quoted in an error, never the value of an unknown variable (a
// secret put in the environment by mistake).
func FlagsFromEnv(fs *pflag.FlagSet, environ []string, others ...string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	for _, f := range others {
		delete(env, EnvName(f))
	}
	var errs []string
	fs.VisitAll(func(f *pflag.Flag) {
		name := EnvName(f.Name)
		if slices.Contains(others, f.Name) {
			return
		}
		v, ok := env[name]
		delete(env, name)
		if !ok || f.Changed || f.Name == "help" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Sprintf("$%s=%q (for --%s): %v", name, v, f.Name, err))
		}
	})
	for k := range env {
		errs = append(errs, fmt.Sprintf("$%s is set but there is no --%s flag", k, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, EnvPrefix), "_", "-"))))
	}
	if len(errs) == 0 {
		return nil
	}
	slices.Sort(errs)
	return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
}

// EnvHelp is a paragraph for a command's help text that says its flags can
// come from the environment.
const EnvHelp = "Every flag can also be set with an environment variable: " + EnvPrefix +
	" and the flag's name in upper case with - as _ (--log-level: GATEHOUSE_LOG_LEVEL, --data-dir: GATEHOUSE_DATA_DIR). " +
	"A flag on the command line wins over the variable. A value the flag refuses, or a GATEHOUSE_ variable that names no flag, is an error."
