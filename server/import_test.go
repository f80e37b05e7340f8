package server_test

import (
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/server"
)

func TestParseImportFile(t *testing.T) {
	rows, err := server.ParseImportFile(strings.NewReader(`[
		{"ek_public_sha256": "aa", "group": "g", "labels": {"site": "lyon"}},
		{"ek_certificate": "MIIB", "group": "h"}]`))
	if err != nil || len(rows) != 2 || rows[0].Row != 1 || rows[1].Row != 2 || rows[0].Labels["site"] != "lyon" || rows[1].EKCertificate != "MIIB" {
		t.Fatalf("JSON: %+v %v", rows, err)
	}
	rows, err = server.ParseImportFile(strings.NewReader("group,ek_public_sha256,labels\ng,AB,site=a;rack=4\ng,\"x\n"))
	if err != nil || len(rows) != 2 || rows[0].Row != 2 || rows[0].EKPublicSHA256 != "ab" || rows[0].Labels["rack"] != "4" {
		t.Fatalf("CSV: %+v %v", rows, err)
	}
	if rows[1].ParseError == "" {
		t.Fatalf("a broken CSV row carries no parse error: %+v", rows[1])
	}
	if _, err := server.ParseImportFile(strings.NewReader("group,serial\ng,1\n")); err == nil {
		t.Fatal("a CSV without an EK column was accepted")
	}
	if _, err := server.ParseImportFile(strings.NewReader(`[{"group": 1}]`)); err == nil {
		t.Fatal("malformed JSON was accepted")
	}
}
