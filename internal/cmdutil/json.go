package cmdutil

import (
	"encoding/json"
	"io"
	"reflect"
)

// WriteJSON writes v as `-o json` output: indented, and a nil slice as []
// rather than null, since scripts iterate lists.
func WriteJSON(w io.Writer, v any) error {
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
		v = reflect.MakeSlice(rv.Type(), 0, 0).Interface()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
