package server

import (
	"encoding/json"
)

// mergeConfig applies a device's override to its group's configuration with
// JSON Merge Patch semantics (RFC 7386): objects merge key by key, the
// override wins, and null removes a key. Both are JSON objects (validated
// when stored); an empty one counts as {}.
func mergeConfig(group, override json.RawMessage) json.RawMessage {
	var base any = map[string]any{}
	if len(group) > 0 {
		_ = json.Unmarshal(group, &base)
	}
	if len(override) > 0 {
		var patch any
		if json.Unmarshal(override, &patch) == nil {
			base = mergePatch(base, patch)
		}
	}
	out, err := json.Marshal(base)
	if err != nil {
		return json.RawMessage("{}")
	}
	return out
}

func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
		} else {
			t[k] = mergePatch(t[k], v)
		}
	}
	return t
}
