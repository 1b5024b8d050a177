// centrifuge-bench: the comparison target of collab-load's `centrifugo`
// target. Centrifugo's server module is not available from the module
// proxy we build with, so this is the smallest server that behaves like
// Centrifugo v6 for the benchmark's traffic, built on centrifuge, the Go
// library Centrifugo itself runs on:
//
//   - its client protocol (JSON over /connection/websocket: connect with a
//     token, subscribe, publish, pushes, ping/pong);
//   - connections authenticated by an HS256 JWT (`sub`, `exp`) signed with
//     the configured secret, checked on the connect command as Centrifugo
//     does;
//   - client-side subscribe and publish allowed in every channel (a
//     namespace with allow_subscribe_for_client and allow_publish_for_client);
//   - the in-memory broker, no history, no presence: nothing is stored.
//
// Settings come from the JSON file named by -config (see config.json).
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/centrifugal/centrifuge"
)

type config struct {
	// Address to listen on, e.g. "127.0.0.1:8000".
	Listen string `json:"listen"`
	// HMAC secret of connection tokens (Centrifugo: client.token.hmac_secret_key).
	HMACSecret string `json:"hmac_secret_key"`
	// Origins accepted on the WebSocket upgrade; "*" accepts any
	// (Centrifugo: client.allowed_origins).
	AllowedOrigins []string `json:"allowed_origins"`
	// Client queue limit in bytes before a slow client is disconnected
	// (Centrifugo: client.queue_max_size).
	ClientQueueMaxSize int `json:"client_queue_max_size"`
}

type claims struct {
	Sub string `json:"sub"`
	Exp int64  `json:"exp"`
}

var errBadToken = errors.New("bad token")

// verify checks an HS256 JWT and returns its claims.
func verify(token string, secret []byte) (claims, error) {
	var c claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, errBadToken
	}
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return c, errBadToken
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(header, &h) != nil || h.Alg != "HS256" {
		return c, errBadToken
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return c, errBadToken
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &c) != nil || c.Sub == "" {
		return c, errBadToken
	}
	if c.Exp != 0 && c.Exp < time.Now().Unix() {
		return c, centrifuge.ErrorTokenExpired
	}
	return c, nil
}

func main() {
	path := flag.String("config", "config.json", "configuration file")
	listen := flag.String("listen", "", "address to listen on (overrides the file)")
	flag.Parse()

	raw, err := os.ReadFile(*path)
	if err != nil {
		log.Fatalf("reading config: %v", err)
	}
	var cfg config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		log.Fatalf("parsing config: %v", err)
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if cfg.HMACSecret == "" {
		log.Fatal("config: hmac_secret_key is required")
	}
	secret := []byte(cfg.HMACSecret)

	node, err := centrifuge.New(centrifuge.Config{
		LogLevel:           centrifuge.LogLevelError,
		ClientQueueMaxSize: cfg.ClientQueueMaxSize,
	})
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(_ context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		c, err := verify(e.Token, secret)
		if err != nil {
			return centrifuge.ConnectReply{}, centrifuge.DisconnectInvalidToken
		}
		return centrifuge.ConnectReply{
			Credentials: &centrifuge.Credentials{UserID: c.Sub, ExpireAt: 0},
		}, nil
	})
	node.OnConnect(func(client *centrifuge.Client) {
		client.OnSubscribe(func(_ centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		client.OnPublish(func(_ centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			cb(centrifuge.PublishReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}

	origins := map[string]bool{}
	for _, o := range cfg.AllowedOrigins {
		origins[o] = true
	}
	ws := centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		CheckOrigin: func(r *http.Request) bool {
			origin := r.Header.Get("Origin")
			return origin == "" || origins["*"] || origins[origin]
		},
	})
	mux := http.NewServeMux()
	mux.Handle("/connection/websocket", ws)
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Fatal(err)
	}
	// The bench script waits for this line.
	log.Printf("listening on http://%s", ln.Addr())
	log.Fatal(http.Serve(ln, mux))
}
