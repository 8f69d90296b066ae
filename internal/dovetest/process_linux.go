package dovetest

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// wait waits for the master to exit, ends whatever it left in its process
// group and waits until those are gone too, then reaps the master. Until it
// is reaped its pid, which is also the group id, cannot be reused, so
// signalling the group before that can only reach our own processes. When
// exited closes, no process of this Dovecot runs any more: its ports are
// closed and its connections reset.
func (p *process) wait() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	p.mu.Lock()
	syscall.Kill(-p.pid, syscall.SIGKILL) // leftovers only: the master is dead
	// SIGKILL is asynchronous: poll /proc (bounded) until no live member
	// of the group is left. Zombies do not count: they hold no sockets.
	deadline := time.Now().Add(stopTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	for groupAlive(p.pid) && time.Now().Before(deadline) {
		<-tick.C
	}
	tick.Stop()
	p.err = p.cmd.Wait()
	p.reaped = true
	p.mu.Unlock()
	close(p.exited)
}

// groupAlive reports whether a process of group pgid other than its leader
// runs and is not a zombie, reading /proc/PID/stat.
func groupAlive(pgid int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pgid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid pgrp ...": comm may hold spaces and ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 4 || f[0][0] == 'Z' || f[0][0] == 'X' {
			continue
		}
		if g, err := strconv.Atoi(string(f[2])); err == nil && g == pgid {
			return true
		}
	}
	return false
}
