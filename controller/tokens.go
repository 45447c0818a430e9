package controller

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/tvd-dev/tvd/api/client"
)

// Join tokens read tvd1.ID.SECRET.CAHASH: ID names the token in the store,
// only the SHA-256 of SECRET is stored, and CAHASH is the hex SHA-256 of
// the deployment's root certificate, with which an agent authenticates the
// controller before it holds the trust bundle (as kubeadm's discovery
// token CA hash does).

// newJoinToken returns a fresh token id, secret and the token string.
func newJoinToken(caHash string) (id, secret, token string) {
	var idb [8]byte
	var sb [24]byte
	rand.Read(idb[:])
	rand.Read(sb[:])
	id = hex.EncodeToString(idb[:])
	secret = base64.RawURLEncoding.EncodeToString(sb[:])
	return id, secret, strings.Join([]string{client.TokenPrefix, id, secret, caHash}, ".")
}

// parseJoinToken returns a token's id and secret.
func parseJoinToken(s string) (id, secret string, err error) {
	if s == "" {
		return "", "", errUnauthenticated("enrolment needs a join token (tvd admin token)")
	}
	id, secret, _, err = client.ParseJoinToken(s)
	if err != nil {
		return "", "", errInvalid("%v", err)
	}
	return id, secret, nil
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
