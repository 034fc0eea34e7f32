package qmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Decode fills the struct pointed to by dst from the command's arguments,
// checking them the way QEMU's QAPI visitors do. Fields are named by a
// `qmp:"name"` tag; `qmp:"name,optional"` may be absent (use a pointer or
// keep the zero value). Missing, unexpected and ill-typed parameters are
// GenericErrors with QEMU's wording.
func (r *Request) Decode(dst any) error {
	args := map[string]json.RawMessage{}
	if len(r.Args) > 0 {
		if err := json.Unmarshal(r.Args, &args); err != nil {
			return Errorf("QMP input member 'arguments' must be an object")
		}
	}
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		panic("qmp: Decode needs a pointer to a struct")
	}
	rv = rv.Elem()
	rt := rv.Type()
	known := map[string]bool{}
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		tag := f.Tag.Get("qmp")
		if tag == "" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		known[name] = true
		raw, ok := args[name]
		if !ok {
			if opts != "optional" {
				return Errorf("Parameter '%s' is missing", name)
			}
			continue
		}
		ft := f.Type
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) && ft.Kind() != reflect.Pointer && ft != reflect.TypeOf(json.RawMessage(nil)) {
			return Errorf("Invalid parameter type for '%s', expected: %s", name, qapiType(ft))
		}
		if err := json.Unmarshal(raw, rv.Field(i).Addr().Interface()); err != nil {
			return Errorf("Invalid parameter type for '%s', expected: %s", name, qapiType(ft))
		}
	}
	var extra []string
	for k := range args {
		if !known[k] {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return Errorf("Parameter '%s' is unexpected", extra[0])
	}
	return nil
}

func qapiType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return fmt.Sprint(t)
}
