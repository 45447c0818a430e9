package workload_test

import (
	"bufio"
	"context"
	"fmt"
	"os"

	"github.com/tvd-dev/tvd/workload"
)

// An application in an EE of the shop domain: a mutual-TLS server and
// client with the member identity, a peer check, a domain secret and an
// encrypted store. Nothing is configured: the SDK finds the agent's
// Workload API socket.
func Example() {
	ctx := context.Background()

	l, err := workload.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		peer, err := workload.PeerInfo(conn)
		if err != nil {
			fmt.Fprintln(conn, "error:", err)
			return
		}
		fmt.Fprintf(conn, "hello %s, member of %s: %v\n", peer.EE, peer.Domain, peer.Member())
	}()

	conn, err := workload.Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	line, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	fmt.Print(line)

	key, err := workload.Secret(ctx, "order-signing-key")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("order-signing-key:", len(key), "bytes")

	dir, _ := os.MkdirTemp("", "shop-ledger-")
	defer os.RemoveAll(dir)
	st, err := workload.OpenStore(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := st.Put(ctx, "ledger", []byte("order 1: book, $12.00")); err != nil {
		fmt.Println(err)
		return
	}
	b, err := st.Get(ctx, "ledger")
	fmt.Printf("%s %v\n", b, err)
	// Output:
	// hello shop-web, member of shop: true
	// order-signing-key: 32 bytes
	// order 1: book, $12.00 <nil>
}
