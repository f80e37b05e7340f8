package chaos

import (
	"context"
	"fmt"
	"time"
)

// Network faults. Each replaces or edits the set of cut node pairs; a cut
// pair's packets are dropped silently in both directions (no RST, no ICMP:
// a peer's connection attempts time out), while the test process still
// reaches every node. Faults compose with Kill and Pause.

// Partition splits the cluster into the given groups: nodes in different
// groups cannot talk, nodes in one group can. Every node must be in
// exactly one group. Partition([]int{0, 1}, []int{2}) is a 2/1 split.
func (c *Cluster) Partition(groups ...[]int) error {
	side := make(map[int]int, len(c.Nodes))
	for g, nodes := range groups {
		for _, i := range nodes {
			if i < 0 || i >= len(c.Nodes) {
				return fmt.Errorf("chaos: no node %d", i)
			}
			if _, dup := side[i]; dup {
				return fmt.Errorf("chaos: node %d is in two groups", i)
			}
			side[i] = g
		}
	}
	if len(side) != len(c.Nodes) {
		return fmt.Errorf("chaos: %d of %d nodes placed in a group", len(side), len(c.Nodes))
	}
	cut := map[[2]int]bool{}
	for i := range c.Nodes {
		for j := i + 1; j < len(c.Nodes); j++ {
			if side[i] != side[j] {
				cut[pair(i, j)] = true
			}
		}
	}
	return c.lab.setCut(cut)
}

// Isolate cuts node i from every other node (it is alone on the minority
// side).
func (c *Cluster) Isolate(i int) error {
	var rest []int
	for j := range c.Nodes {
		if j != i {
			rest = append(rest, j)
		}
	}
	return c.Partition([]int{i}, rest)
}

// Bridge leaves a connected to b and b to far, but cuts a from far: b is
// the only node that sees both sides (with three nodes, the rest is the
// non-transitive partition that Jepsen calls a bridge).
func (c *Cluster) Bridge(a, b, far int) error {
	if a == b || b == far || a == far {
		return fmt.Errorf("chaos: bridge needs three distinct nodes, got %d, %d, %d", a, b, far)
	}
	return c.lab.setCut(map[[2]int]bool{pair(a, far): true})
}

// Cut drops traffic between i and j, keeping the other cuts.
func (c *Cluster) Cut(i, j int) error {
	cut := c.lab.cuts()
	cut[pair(i, j)] = true
	return c.lab.setCut(cut)
}

// Link restores traffic between i and j, keeping the other cuts.
func (c *Cluster) Link(i, j int) error {
	cut := c.lab.cuts()
	delete(cut, pair(i, j))
	return c.lab.setCut(cut)
}

// Flap cuts and restores the link between i and j every period until ctx
// ends or times cuts were made, and leaves the link restored.
func (c *Cluster) Flap(ctx context.Context, i, j int, period time.Duration, times int) error {
	for k := 0; k < times; k++ {
		if err := c.Cut(i, j); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(period):
		}
		if err := c.Link(i, j); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(period):
		}
	}
	return nil
}

// HealAll restores every link.
func (c *Cluster) HealAll() error { return c.lab.setCut(map[[2]int]bool{}) }

// Cuts lists the pairs of nodes that cannot talk now, each as [i, j] with
// i < j.
func (c *Cluster) Cuts() [][2]int {
	var out [][2]int
	cut := c.lab.cuts()
	for i := range c.Nodes {
		for j := i + 1; j < len(c.Nodes); j++ {
			if cut[pair(i, j)] {
				out = append(out, [2]int{i, j})
			}
		}
	}
	return out
}
