//go:build !linux

package dovetest

// wait reaps the master. Best effort outside Linux (CI and Debian are
// Linux): without waitid(WNOWAIT) and /proc, processes the master left
// behind are not hunted down.
func (p *process) wait() {
	err := p.cmd.Wait()
	p.mu.Lock()
	p.err = err
	p.reaped = true
	p.mu.Unlock()
	close(p.exited)
}
