// Command idserver is an unmodified-style Go server for l3iso's tests: it
// listens with Go's defaults — net.Listen("tcp", ":PORT") and
// net.ListenPacket("udp", ":PORT"), dual-stack IPv6 sockets — and answers
// every connection and every datagram with its name, so a client can tell
// which container answered.
//
//	idserver NAME PORT
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: idserver NAME PORT")
		os.Exit(2)
	}
	name, port := os.Args[1], os.Args[2]
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idserver:", err)
		os.Exit(1)
	}
	pc, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idserver:", err)
		os.Exit(1)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name+"\n"), from)
		}
	}()
	fmt.Println("ready", ln.Addr(), pc.LocalAddr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(name + "\n"))
		c.Close()
	}
}
