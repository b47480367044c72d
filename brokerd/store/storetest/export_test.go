package storetest

import "time"

// SetPatience shortens the suite's waits, for this package's tests of runs
// that are meant to fail (see memstore_test.go): a broken memstore should
// not take the full patience of each wait to be found out.
func SetPatience(d time.Duration) { patience = d }
