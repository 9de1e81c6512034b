// Command sleeper is the bench's reference for the Go runtime alone: a
// program that only sleeps, built as tether is (stripped, static).
package main

import "time"

func main() {
	for {
		time.Sleep(time.Hour)
	}
}
