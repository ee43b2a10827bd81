// Command goyaml prints what kubectl makes of YAML documents, for tests/unit/test_kubeyaml.py.
//
// kubectl apply -f (v1.36) turns each YAML document into JSON with sigs.k8s.io/yaml
// (v1.6.0, parsing with go.yaml.in/yaml/v2 v2.4.3, the versions kubectl v1.36.3 is built
// with); the API server only sees that JSON. Input on stdin: a JSON array of YAML
// documents. Output: a JSON array, per document {"json": "..."} or {"error": "..."}.
package main

import (
	"encoding/json"
	"os"

	"sigs.k8s.io/yaml"
)

type result struct {
	JSON  *string `json:"json,omitempty"`
	Error *string `json:"error,omitempty"`
}

func main() {
	var docs []string
	if err := json.NewDecoder(os.Stdin).Decode(&docs); err != nil {
		panic(err)
	}
	out := make([]result, len(docs))
	for i, doc := range docs {
		converted, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			text := err.Error()
			out[i].Error = &text
		} else {
			text := string(converted)
			out[i].JSON = &text
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
