// Command replicated-example uses libreplicated from Go through github.com/mattn/go-sqlite3.
//
// How the extension gets loaded (DESIGN.md §2):
//
//  1. Register a driver whose SQLiteDriver.Extensions names the library. mattn/go-sqlite3 loads the
//     extensions of a connection only AFTER sqlite3_open_v2 has returned, and sqlite3_open_v2 is where
//     SQLite looks up the `vfs=` of the DSN. So the very first connection must NOT name vfs=replicated
//     (it would fail with "no such vfs: replicated", mattn/go-sqlite3#876).
//  2. Open one plain bootstrap connection (":memory:") with that driver and use it once (Ping), which
//     runs sqlite3_replicated_init. The extension returns SQLITE_OK_LOAD_PERMANENTLY, so the VFS stays
//     registered process-wide even after the bootstrap connection is closed.
//  3. Open "file:...?vfs=replicated&...&_sync=FULL" with the same driver (_sync=FULL: see below). Every connection that database/sql opens
//     for this *sql.DB (SetMaxOpenConns, reconnects after errors) passes the DSN to sqlite3_open_v2 again
//     and finds the VFS because step 2 already registered it; each new connection then also loads the
//     extension (idempotent), which registers the replicated_* SQL functions on it.
//
// Build: cgo is required (CGO_ENABLED=1, gcc). Do not build with the sqlite_omit_load_extension tag.
// By default go-sqlite3 compiles its own amalgamation into the binary; that is fine: the extension
// calls whichever SQLite loads it through the sqlite3_api_routines table it is handed.
//
// Usage:
//
//	go run . -lib ../../target/release/libreplicated -db /tmp/app.db -port 7001 [-mode write|read] [-rows 3]
//
// Output (one item per line): "row <id> <val>" for every row in the table, "count <n>", then
// "status <json>" (replicated_status(), after waiting up to -wait for this node to become leader).
// Exits non-zero on any error.
package main

import (
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	lib := flag.String("lib", "../../target/release/libreplicated", "path of libreplicated (with or without .so)")
	dbPath := flag.String("db", "", "database file (required)")
	port := flag.Int("port", 0, "UDP port of this node (required)")
	node := flag.Int("node", 1, "node id")
	secret := flag.String("secret", "example-cluster-secret", "shared cluster secret")
	data := flag.String("data", "", "Raft directory (default <db>-raft/)")
	mode := flag.String("mode", "write", "write: create the table, insert rows, read them back; read: only read")
	rows := flag.Int("rows", 3, "rows to insert in write mode")
	wait := flag.Duration("wait", 10*time.Second, "how long to wait for this node to be leader before printing the status")
	flag.Parse()
	if *dbPath == "" || *port == 0 {
		return errors.New("-db and -port are required")
	}
	if *mode != "write" && *mode != "read" {
		return fmt.Errorf("-mode must be write or read, not %q", *mode)
	}
	libPath, err := filepath.Abs(*lib)
	if err != nil {
		return err
	}

	// 1. A driver that loads the extension into every connection it opens.
	sql.Register("sqlite3_replicated", &sqlite3.SQLiteDriver{Extensions: []string{libPath}})

	// 2. Bootstrap: a plain connection (no vfs=) that loads the extension and so registers the VFS.
	boot, err := sql.Open("sqlite3_replicated", ":memory:")
	if err != nil {
		return fmt.Errorf("bootstrap open: %w", err)
	}
	if err := boot.Ping(); err != nil { // sql.Open is lazy: Ping really connects (and loads the extension)
		boot.Close()
		return fmt.Errorf("bootstrap connection (loading %s): %w", libPath, err)
	}
	boot.Close() // the VFS stays registered: the extension returned SQLITE_OK_LOAD_PERMANENTLY

	// 3. The replicated database.
	q := url.Values{}
	q.Set("vfs", "replicated")
	q.Set("node", fmt.Sprint(*node))
	q.Set("peers", fmt.Sprintf("%d@127.0.0.1:%d", *node, *port))
	q.Set("secret", *secret)
	// go-sqlite3 runs "PRAGMA synchronous = NORMAL" on every new connection unless the DSN says
	// otherwise (and its bundled SQLite defaults WAL databases to NORMAL). The replicated VFS refuses
	// synchronous below FULL (DESIGN.md §3.3): its commit hook is the WAL sync at commit.
	// _sync is the driver's own parameter; it stays in the URI that SQLite (and the VFS) sees.
	q.Set("_sync", "FULL")
	if *data != "" {
		q.Set("data", *data)
	}
	dsn := "file:" + *dbPath + "?" + q.Encode()
	db, err := sql.Open("sqlite3_replicated", dsn)
	if err != nil {
		return fmt.Errorf("open %s: %w", dsn, err)
	}
	defer db.Close()
	// One connection is enough here. With more, each pooled connection opens the same DSN (same node,
	// same Raft group inside this process), which the extension supports; the VFS is already registered.
	db.SetMaxOpenConns(1)
	if err := db.Ping(); err != nil {
		return fmt.Errorf("open %s: %w", dsn, err)
	}

	if *mode == "write" {
		if err := write(db, *rows); err != nil {
			return err
		}
	}

	r, err := db.Query("SELECT id, val FROM items ORDER BY id")
	if err != nil {
		return fmt.Errorf("select: %w", err)
	}
	n := 0
	for r.Next() {
		var id int64
		var val string
		if err := r.Scan(&id, &val); err != nil {
			r.Close()
			return fmt.Errorf("scan: %w", err)
		}
		fmt.Printf("row %d %s\n", id, val)
		n++
	}
	if err := r.Err(); err != nil {
		r.Close()
		return fmt.Errorf("select: %w", err)
	}
	r.Close()
	fmt.Printf("count %d\n", n)

	status, err := waitLeader(db, *wait)
	if err != nil {
		return err
	}
	fmt.Printf("status %s\n", status)
	return nil
}

// write inserts rows-1 rows in one explicit transaction and one more in autocommit mode
// (both commit paths go through Raft before returning).
func write(db *sql.DB, rows int) error {
	if _, err := db.Exec("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)"); err != nil {
		return fmt.Errorf("create table: %w (replicated_last_error: %s)", err, lastError(db))
	}
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	for i := 1; i < rows; i++ {
		if _, err := tx.Exec("INSERT INTO items(val) VALUES (?)", fmt.Sprintf("go-%d", i)); err != nil {
			tx.Rollback()
			return fmt.Errorf("insert: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w (replicated_last_error: %s)", err, lastError(db))
	}
	if rows > 0 {
		if _, err := db.Exec("INSERT INTO items(val) VALUES (?)", fmt.Sprintf("go-%d", rows)); err != nil {
			return fmt.Errorf("autocommit insert: %w (replicated_last_error: %s)", err, lastError(db))
		}
	}
	return nil
}

// waitLeader polls replicated_status() until role is "leader" or the deadline passes, and returns
// the last status JSON either way (a one-node cluster elects itself within a couple of seconds).
func waitLeader(db *sql.DB, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		var status string
		if err := db.QueryRow("SELECT replicated_status()").Scan(&status); err != nil {
			return "", fmt.Errorf("replicated_status(): %w", err)
		}
		var st struct {
			Role string `json:"role"`
		}
		if err := json.Unmarshal([]byte(status), &st); err != nil {
			return "", fmt.Errorf("replicated_status() is not JSON (%w): %s", err, status)
		}
		if st.Role == "leader" || time.Now().After(deadline) {
			return status, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lastError(db *sql.DB) string {
	var s sql.NullString
	if err := db.QueryRow("SELECT replicated_last_error()").Scan(&s); err != nil {
		return "(" + err.Error() + ")"
	}
	if !s.Valid {
		return "NULL"
	}
	return s.String
}
