//! SQL text for the SQL API (SPEC §12): splitting a query into statements with a real
//! tokenizer, recognising schema changes, finding tables without a PRIMARY KEY, dumping the
//! database as SQL in the style of the sqlite3 shell's `.dump`, and rendering statement results
//! as the JSON of `POST /core/internal/sql`.
//!
//! Everything here is a pure function of its input (and of the connection it is given); the
//! callers decide about transactions, replication and timeouts.

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde_json::{Value, json};

/// The kind of a token of SQL text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Whitespace.
    Space,
    /// A `-- …` or `/* … */` comment (possibly unterminated).
    Comment,
    /// A keyword, bare identifier or number: a run of letters, digits, `_`, `$` and non-ASCII.
    Word,
    /// A string literal or quoted identifier: `'…'`, `"…"`, `` `…` `` or `[…]`.
    Quoted,
    /// `;`.
    Semicolon,
    /// `.`, after which a word is a name and never a keyword.
    Dot,
    /// Any other character.
    Other,
}

/// One token: its kind and its byte range in the text.
#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    /// Whether the token is more than whitespace or a comment.
    fn is_significant(&self) -> bool {
        !matches!(self.kind, Kind::Space | Kind::Comment)
    }
}

/// The tokens of SQL text, in order. Every byte belongs to exactly one token; unterminated
/// literals and comments run to the end of the text. Token boundaries are always at ASCII
/// bytes (or the ends), so slicing the text with them is safe.
struct Tokens<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            bytes: sql.as_bytes(),
            pos: 0,
        }
    }

    /// The end of the quoted token starting at `start` with the quote `quote`, where a doubled
    /// quote stands for itself.
    fn quoted_end(&self, start: usize, quote: u8) -> usize {
        let mut i = start + 1;
        while let Some(offset) = self.bytes[i..].iter().position(|&b| b == quote) {
            let close = i + offset;
            if self.bytes.get(close + 1) == Some(&quote) {
                i = close + 2;
            } else {
                return close + 1;
            }
        }
        self.bytes.len()
    }

    /// The end of the token that runs from `from` up to and including `terminator`, or to the
    /// end of the text.
    fn end_after(&self, from: usize, terminator: &[u8]) -> usize {
        self.bytes[from..]
            .windows(terminator.len())
            .position(|window| window == terminator)
            .map_or(self.bytes.len(), |offset| from + offset + terminator.len())
    }

    /// The end of the run of bytes matching `pred` that starts at `from`.
    fn run_end(&self, from: usize, pred: fn(u8) -> bool) -> usize {
        self.bytes[from..]
            .iter()
            .position(|&b| !pred(b))
            .map_or(self.bytes.len(), |offset| from + offset)
    }
}

/// Whether `b` is whitespace for SQLite.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Whether `b` can be part of a bare word for SQLite.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let first = *self.bytes.get(start)?;
        let second = self.bytes.get(start + 1).copied();
        let (kind, end) = match first {
            b';' => (Kind::Semicolon, start + 1),
            b'.' => (Kind::Dot, start + 1),
            b'\'' | b'"' | b'`' => (Kind::Quoted, self.quoted_end(start, first)),
            b'[' => (Kind::Quoted, self.end_after(start + 1, b"]")),
            b'-' if second == Some(b'-') => (Kind::Comment, self.end_after(start + 2, b"\n")),
            b'/' if second == Some(b'*') => (Kind::Comment, self.end_after(start + 2, b"*/")),
            b if is_space(b) => (Kind::Space, self.run_end(start, is_space)),
            b if is_word_byte(b) => (Kind::Word, self.run_end(start, is_word_byte)),
            _ => (Kind::Other, start + 1),
        };
        self.pos = end;
        Some(Token { kind, start, end })
    }
}

/// What the first words of a statement say about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Head {
    /// Still reading `[EXPLAIN [QUERY PLAN]]`.
    #[default]
    Open,
    /// After `CREATE [TEMP|TEMPORARY]`.
    Create,
    /// A `CREATE TRIGGER` statement.
    Trigger,
    /// Any other statement.
    Plain,
}

/// The state of the statement being read by [`split_statements`].
#[derive(Debug, Default)]
struct Statement {
    /// Whether a token other than whitespace and comments was seen.
    has_content: bool,
    head: Head,
    /// Whether the BEGIN of a trigger body was seen.
    in_body: bool,
    /// How many CASE expressions are open.
    case_depth: u32,
    /// Whether the last significant token is the END that closes the trigger body.
    body_closed: bool,
    /// Whether the last significant token is a `.`.
    after_dot: bool,
}

impl Statement {
    /// Whether a `;` now ends the statement: always, except inside the body of a trigger.
    fn ends_at_semicolon(&self) -> bool {
        self.head != Head::Trigger || !self.in_body || self.body_closed
    }

    /// Takes in the next token of the statement.
    fn feed(&mut self, sql: &str, token: Token) {
        if !token.is_significant() {
            return;
        }
        self.has_content = true;
        let keyword = (token.kind == Kind::Word && !self.after_dot)
            .then(|| sql[token.start..token.end].to_ascii_uppercase());
        self.after_dot = token.kind == Kind::Dot;
        self.head = match (self.head, keyword.as_deref()) {
            (Head::Open, Some("EXPLAIN" | "QUERY" | "PLAN")) => Head::Open,
            (Head::Open, Some("CREATE")) => Head::Create,
            (Head::Create, Some("TEMP" | "TEMPORARY")) => Head::Create,
            (Head::Create, Some("TRIGGER")) => Head::Trigger,
            (Head::Open | Head::Create, _) => Head::Plain,
            (head, _) => head,
        };
        if self.head != Head::Trigger {
            return;
        }
        self.body_closed = false;
        match keyword.as_deref() {
            Some("CASE") => self.case_depth += 1,
            Some("END") if self.case_depth > 0 => self.case_depth -= 1,
            Some("END") => self.body_closed = self.in_body,
            Some("BEGIN") if self.case_depth == 0 => self.in_body = true,
            _ => {}
        }
    }
}

/// Splits `sql` into statements on the `;` that are outside string literals (`'…'`), quoted
/// identifiers (`"…"`, `` `…` ``, `[…]`), comments (`-- …`, `/* … */`) and the
/// `BEGIN … END` body of `CREATE TRIGGER` (where `CASE … END` does not close the body).
///
/// Statements are trimmed, carry no `;`, and those holding only whitespace and comments are
/// skipped. Keywords are matched case-insensitively as whole words, and never after a `.`.
/// An unterminated literal, comment or trigger body runs to the end of the text, as part of
/// the last statement.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut push = |text: &str, statement: &Statement| {
        if statement.has_content {
            statements.push(text.trim().to_owned());
        }
    };
    let mut start = 0;
    let mut statement = Statement::default();
    for token in Tokens::new(sql) {
        if token.kind == Kind::Semicolon && statement.ends_at_semicolon() {
            push(&sql[start..token.start], &statement);
            start = token.end;
            statement = Statement::default();
        } else {
            statement.feed(sql, token);
        }
    }
    push(&sql[start..], &statement);
    statements
}

/// Whether the first keyword of `statement` (after whitespace and comments) is CREATE, ALTER
/// or DROP, in any case.
pub fn is_schema_change(statement: &str) -> bool {
    Tokens::new(statement)
        .find(Token::is_significant)
        .is_some_and(|token| {
            let word = &statement[token.start..token.end];
            token.kind == Kind::Word
                && ["CREATE", "ALTER", "DROP"]
                    .iter()
                    .any(|keyword| word.eq_ignore_ascii_case(keyword))
        })
}

/// Whether `sql` (from `sqlite_schema`) creates a virtual table.
fn is_virtual_table(sql: &str) -> bool {
    sql.get(..20)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("CREATE VIRTUAL TABLE"))
}

/// Whether `name` is reserved by SQLite (`sqlite_…`, in any case).
fn is_sqlite_name(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("sqlite_"))
}

/// Why the ordinary tables of the main database (not `sqlite_*`, not virtual) cannot be
/// replicated as changesets, if they cannot (DESIGN §4.2: changesets address rows by primary
/// key), as the message for the first such table by name:
/// - `Table %q has no PRIMARY KEY`: no column has `pk > 0` in `PRAGMA table_info`
///   (`INTEGER PRIMARY KEY`, column- or table-level `PRIMARY KEY` and every `WITHOUT ROWID`
///   table have one);
/// - `Table %q has a PRIMARY KEY column %q that may be NULL; declare it NOT NULL`: SQLite lets
///   a rowid table's non-`INTEGER` key be NULL, and the session extension skips such rows, so
///   they would never reach the other members.
pub fn primary_key_violation(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut tables = conn.prepare(
        "SELECT s.name, s.sql, coalesce(t.wr, 0) FROM sqlite_schema AS s \
         LEFT JOIN pragma_table_list AS t ON t.schema = 'main' AND t.name = s.name \
         WHERE s.type = 'table' ORDER BY s.name",
    )?;
    let mut key_columns = conn.prepare(
        "SELECT name, type, \"notnull\" FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
    )?;
    let mut rows = tables.query([])?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let sql: Option<String> = row.get(1)?;
        let without_rowid: bool = row.get(2)?;
        if is_sqlite_name(&name) || sql.as_deref().is_some_and(is_virtual_table) {
            continue;
        }
        let columns = key_columns
            .query_map([&name], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if columns.is_empty() {
            return Ok(Some(format!("Table {name:?} has no PRIMARY KEY")));
        }
        let rowid_alias = columns.len() == 1 && columns[0].1.eq_ignore_ascii_case("INTEGER");
        if without_rowid || rowid_alias {
            continue;
        }
        if let Some((column, _, _)) = columns.iter().find(|(_, _, not_null)| !not_null) {
            return Ok(Some(format!(
                "Table {name:?} has a PRIMARY KEY column {column:?} that may be NULL; declare it NOT NULL"
            )));
        }
    }
    Ok(None)
}

/// SQLite's keywords (`sqlite3_keyword_name`), sorted, for quoting names like the shell.
const KEYWORDS: [&str; 147] = [
    "ABORT",
    "ACTION",
    "ADD",
    "AFTER",
    "ALL",
    "ALTER",
    "ALWAYS",
    "ANALYZE",
    "AND",
    "AS",
    "ASC",
    "ATTACH",
    "AUTOINCREMENT",
    "BEFORE",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONFLICT",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "DATABASE",
    "DEFAULT",
    "DEFERRABLE",
    "DEFERRED",
    "DELETE",
    "DESC",
    "DETACH",
    "DISTINCT",
    "DO",
    "DROP",
    "EACH",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXCLUDE",
    "EXCLUSIVE",
    "EXISTS",
    "EXPLAIN",
    "FAIL",
    "FILTER",
    "FIRST",
    "FOLLOWING",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GENERATED",
    "GLOB",
    "GROUP",
    "GROUPS",
    "HAVING",
    "IF",
    "IGNORE",
    "IMMEDIATE",
    "IN",
    "INDEX",
    "INDEXED",
    "INITIALLY",
    "INNER",
    "INSERT",
    "INSTEAD",
    "INTERSECT",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "KEY",
    "LAST",
    "LEFT",
    "LIKE",
    "LIMIT",
    "MATCH",
    "MATERIALIZED",
    "NATURAL",
    "NO",
    "NOT",
    "NOTHING",
    "NOTNULL",
    "NULL",
    "NULLS",
    "OF",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OTHERS",
    "OUTER",
    "OVER",
    "PARTITION",
    "PLAN",
    "PRAGMA",
    "PRECEDING",
    "PRIMARY",
    "QUERY",
    "RAISE",
    "RANGE",
    "RECURSIVE",
    "REFERENCES",
    "REGEXP",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPLACE",
    "RESTRICT",
    "RETURNING",
    "RIGHT",
    "ROLLBACK",
    "ROW",
    "ROWS",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "TABLE",
    "TEMP",
    "TEMPORARY",
    "THEN",
    "TIES",
    "TO",
    "TRANSACTION",
    "TRIGGER",
    "UNBOUNDED",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USING",
    "VACUUM",
    "VALUES",
    "VIEW",
    "VIRTUAL",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHOUT",
];

/// `name` double-quoted, with `"` doubled.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `name` as the shell writes it: bare when it is an ASCII identifier that is not a keyword,
/// else double-quoted.
fn shell_name(name: &str) -> String {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain
        && KEYWORDS
            .binary_search(&name.to_ascii_uppercase().as_str())
            .is_err()
    {
        name.to_owned()
    } else {
        quoted(name)
    }
}

/// The SQL literal of a value, as the shell writes it (see [`dump`]).
fn literal(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) if r.is_nan() => "NULL".to_owned(),
        ValueRef::Real(r) if r == f64::INFINITY => "9.0e+999".to_owned(),
        ValueRef::Real(r) if r == f64::NEG_INFINITY => "-9.0e+999".to_owned(),
        // `Debug` is the shortest text that parses back to the same value, and always has a
        // `.` or an exponent, so SQLite reads it as a REAL.
        ValueRef::Real(r) => format!("{r:?}"),
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => format!("'{}'", text.replace('\'', "''")),
            _ => format!("CAST(X'{}' AS TEXT)", hex::encode(bytes)),
        },
        ValueRef::Blob(bytes) => format!("X'{}'", hex::encode(bytes)),
    }
}

/// Appends one `INSERT INTO <name> VALUES(…);` line per row of `table`, in scan order (rowid
/// order, or primary key order for `WITHOUT ROWID`). Generated columns are left out, as
/// `INSERT` without a column list expects.
fn dump_rows(conn: &Connection, table: &str, out: &mut String) -> rusqlite::Result<()> {
    let columns = conn
        .prepare("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid")?
        .query_map([table], |row| row.get::<_, String>(0))?
        .map(|name| name.map(|name| quoted(&name)))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if columns.is_empty() {
        return Ok(());
    }
    let select = format!("SELECT {} FROM {}", columns.join(","), quoted(table));
    let prefix = format!("INSERT INTO {} VALUES(", shell_name(table));
    let mut stmt = conn.prepare(&select)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        out.push_str(&prefix);
        for i in 0..columns.len() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&literal(row.get_ref(i)?));
        }
        out.push_str(");\n");
    }
    Ok(())
}

/// One row of `sqlite_schema`.
struct SchemaEntry {
    kind: String,
    name: String,
    table: String,
    sql: String,
}

/// SQL text that rebuilds the main database in an empty SQLite file, in the style of the
/// sqlite3 shell's `.dump` (SPEC §12).
///
/// The text starts with `PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n` and ends with
/// `COMMIT;\n`. In between, in `sqlite_schema` rowid order: each table's `CREATE TABLE`
/// statement and, unless `schema_only`, one `INSERT INTO <name> VALUES(…);` per row (scan
/// order, generated columns left out); then, unless `schema_only`, `DELETE FROM
/// sqlite_sequence;` and the `sqlite_sequence` rows of the dumped tables when one of them has
/// AUTOINCREMENT; then the indexes, triggers and views. The `CREATE` of `sqlite_*` tables is
/// never written, nor are `sqlite_stat*` rows. Virtual tables are written as the shell does,
/// by inserting into `sqlite_schema` under `PRAGMA writable_schema=ON` (turned off before
/// `COMMIT`); their shadow tables are dumped as ordinary tables. Tables whose name starts with
/// `skip_prefix` are left out with their indexes and triggers, as are views with such a name
/// (an empty prefix skips nothing).
///
/// Names in `INSERT` are bare when they are ASCII identifiers that are not SQLite keywords,
/// else double-quoted, like the shell. Literals: `NULL`; integers as is; reals in their
/// shortest round-trip form, always with a `.` or an exponent (`1.0`, `1.5e300`), infinities
/// as `9.0e+999`/`-9.0e+999`; text single-quoted with `'` doubled and newlines and carriage
/// returns kept literally inside the quotes (the shell's `replace(…)` form is not used), or
/// `CAST(X'…' AS TEXT)` for text that is not valid UTF-8 or holds a NUL; blobs as lowercase
/// `X'…'`.
pub fn dump(conn: &Connection, schema_only: bool, skip_prefix: &str) -> rusqlite::Result<String> {
    let skipped = |name: &str| !skip_prefix.is_empty() && name.starts_with(skip_prefix);
    let entries = conn
        .prepare(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql NOT NULL ORDER BY rowid",
        )?
        .query_map([], |row| {
            Ok(SchemaEntry {
                kind: row.get(0)?,
                name: row.get(1)?,
                table: row.get(2)?,
                sql: row.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;

    let mut out = String::from("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n");
    let mut writable_schema = false;
    let mut autoincrement = false;
    let mut has_sequence = false;
    for entry in entries.iter().filter(|entry| entry.kind == "table") {
        if entry.name == "sqlite_sequence" {
            has_sequence = true;
        }
        if is_sqlite_name(&entry.name) || skipped(&entry.name) {
            continue;
        }
        if is_virtual_table(&entry.sql) {
            if !writable_schema {
                out.push_str("PRAGMA writable_schema=ON;\n");
                writable_schema = true;
            }
            let name = literal(ValueRef::Text(entry.name.as_bytes()));
            out.push_str(&format!(
                "INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table',{name},{name},0,{});\n",
                literal(ValueRef::Text(entry.sql.as_bytes())),
            ));
            continue;
        }
        out.push_str(&entry.sql);
        out.push_str(";\n");
        autoincrement |= Tokens::new(&entry.sql).any(|token| {
            token.kind == Kind::Word
                && entry.sql[token.start..token.end].eq_ignore_ascii_case("AUTOINCREMENT")
        });
        if !schema_only {
            dump_rows(conn, &entry.name, &mut out)?;
        }
    }
    if !schema_only && autoincrement && has_sequence {
        out.push_str("DELETE FROM sqlite_sequence;\n");
        let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let name = row.get_ref(0)?;
            if let ValueRef::Text(text) = name
                && skipped(&String::from_utf8_lossy(text))
            {
                continue;
            }
            out.push_str(&format!(
                "INSERT INTO sqlite_sequence VALUES({},{});\n",
                literal(name),
                literal(row.get_ref(1)?),
            ));
        }
    }
    for entry in &entries {
        let dumped = matches!(entry.kind.as_str(), "index" | "trigger" | "view")
            && !is_sqlite_name(&entry.table)
            && !skipped(&entry.table)
            && !skipped(&entry.name);
        if dumped {
            out.push_str(&entry.sql);
            out.push_str(";\n");
        }
    }
    if writable_schema {
        out.push_str("PRAGMA writable_schema=OFF;\n");
    }
    out.push_str("COMMIT;\n");
    Ok(out)
}

/// The JSON of a value in a result of the SQL API: INTEGER and REAL become numbers (a REAL that
/// is not finite becomes `null`), TEXT a string, BLOB a string (UTF-8 with replacement
/// characters) and NULL `null`.
pub fn value_to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(r) => serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
    }
}

/// Runs one statement and renders its result for `POST /core/internal/sql`: a statement that
/// yields columns gives `{"type":"select","columns":[…],"rows":[[…]],"rows_affected":0}`, any
/// other `{"type":"exec","columns":[],"rows":[],"rows_affected":N}`. N is the number of rows
/// the statement changed (`changes()`), and 0 for a statement that changed no row at all,
/// such as DDL (where `changes()` would still report the previous statement's count).
pub fn run_query(conn: &Connection, statement: &str) -> rusqlite::Result<Value> {
    let mut stmt = conn.prepare(statement)?;
    let width = stmt.column_count();
    if width > 0 {
        let columns: Vec<Value> = stmt.column_names().map(Value::from).collect();
        let mut rows = Vec::new();
        let mut cursor = stmt.query([])?;
        while let Some(row) = cursor.next()? {
            let values = (0..width)
                .map(|i| row.get_ref(i).map(value_to_json))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.push(Value::Array(values));
        }
        return Ok(json!({"type": "select", "columns": columns, "rows": rows, "rows_affected": 0}));
    }
    let before = conn.total_changes();
    let changed = stmt.execute([])?;
    let rows_affected = if conn.total_changes() == before {
        0
    } else {
        changed
    };
    Ok(json!({"type": "exec", "columns": [], "rows": [], "rows_affected": rows_affected}))
}

/// Whether `statement` yields columns (prepared on `conn`), which picks the error text of
/// [`error_text`].
pub fn returns_rows(conn: &Connection, statement: &str) -> rusqlite::Result<bool> {
    Ok(conn.prepare(statement)?.column_count() > 0)
}

/// The error of a failed statement of the SQL API: `Failed to execute query: %s` for a statement
/// that returns rows, `Failed to exec query: %s` otherwise.
pub fn error_text(returns_rows: bool, err: &dyn std::fmt::Display) -> String {
    if returns_rows {
        format!("Failed to execute query: {err}")
    } else {
        format!("Failed to exec query: {err}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(sql: &str) -> Vec<String> {
        split_statements(sql)
    }

    fn memory() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    /// Every row (type and literal of each value) of every table of `conn`, by table name.
    fn contents(conn: &Connection) -> Vec<(String, Vec<String>)> {
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        names
            .into_iter()
            .map(|name| {
                let mut stmt = conn
                    .prepare(&format!("SELECT * FROM {} ORDER BY 1", quoted(&name)))
                    .unwrap();
                let width = stmt.column_count();
                let rows = stmt
                    .query_map([], |row| {
                        let values: Vec<String> = (0..width)
                            .map(|i| {
                                let value = row.get_ref(i).unwrap();
                                format!("{:?}:{}", value.data_type(), literal(value))
                            })
                            .collect();
                        Ok(values.join(","))
                    })
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                (name, rows)
            })
            .collect()
    }

    fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        conn.prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn splits_simple_statements_trimmed_without_semicolons() {
        assert_eq!(
            split("  SELECT 1 ;\n\tINSERT INTO t VALUES (2);SELECT 3  "),
            ["SELECT 1", "INSERT INTO t VALUES (2)", "SELECT 3"]
        );
        assert_eq!(split("SELECT 1;"), ["SELECT 1"]);
    }

    #[test]
    fn empty_input_whitespace_semicolons_and_comments_give_nothing() {
        assert!(split("").is_empty());
        assert!(split("  \n\t ").is_empty());
        assert!(split(";;  ; \n;").is_empty());
        assert!(split("-- only a comment; still\n/* and ; another */ ; -- last").is_empty());
        assert_eq!(split(";; SELECT 1;; ;"), ["SELECT 1"]);
    }

    #[test]
    fn semicolons_in_string_literals_do_not_split() {
        assert_eq!(
            split("INSERT INTO t VALUES ('a;b', 'it''s; here', ''); SELECT ';'"),
            [
                "INSERT INTO t VALUES ('a;b', 'it''s; here', '')",
                "SELECT ';'"
            ]
        );
        assert_eq!(split("SELECT '''';SELECT 2"), ["SELECT ''''", "SELECT 2"]);
    }

    #[test]
    fn semicolons_in_quoted_identifiers_do_not_split() {
        assert_eq!(
            split(r#"SELECT "a;b", "x"";y" FROM t; SELECT `c;d`, `e``;f`; SELECT [g;h] FROM u"#),
            [
                r#"SELECT "a;b", "x"";y" FROM t"#,
                "SELECT `c;d`, `e``;f`",
                "SELECT [g;h] FROM u"
            ]
        );
        // A quote of one kind inside another kind of quote is just a character.
        assert_eq!(
            split(r#"SELECT '"' ; SELECT "'"; SELECT [']"#),
            [r#"SELECT '"'"#, r#"SELECT "'""#, "SELECT [']"]
        );
    }

    #[test]
    fn semicolons_in_comments_do_not_split() {
        assert_eq!(
            split("SELECT 1 -- one; two\n, 2; /* a; b */ SELECT /*;*/ 3"),
            ["SELECT 1 -- one; two\n, 2", "/* a; b */ SELECT /*;*/ 3"]
        );
        // `-` and `/` alone are operators, and `*/` outside a comment is not special.
        assert_eq!(
            split("SELECT 4-1; SELECT 4/2; SELECT 2*3"),
            ["SELECT 4-1", "SELECT 4/2", "SELECT 2*3"]
        );
    }

    #[test]
    fn trigger_bodies_with_case_do_not_split() {
        let trigger = "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN\n  \
                       UPDATE t SET kind = CASE WHEN new.v > 0 THEN 'pos' ELSE 'neg' END WHERE id = new.id;\n  \
                       INSERT INTO log VALUES (CASE new.v WHEN 1 THEN 'one' END);\n  \
                       DELETE FROM old WHERE x = 1;\nEND";
        let sql = format!("CREATE TABLE a (id INTEGER PRIMARY KEY); {trigger};\nSELECT 1;");
        assert_eq!(
            split(&sql),
            [
                "CREATE TABLE a (id INTEGER PRIMARY KEY)",
                trigger,
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn trigger_keywords_are_case_insensitive_and_allow_temp_and_when() {
        let trigger = "create temp trigger IF NOT EXISTS x before delete on t \
                       when case old.a when 1 then 1 else 0 end = 1 \
                       begin select raise(abort, 'no;'); update t set b = case when 1 then 2 end; end";
        assert_eq!(
            split(&format!("{trigger}; select 2")),
            [trigger, "select 2"]
        );
        let trigger =
            "EXPLAIN CREATE TEMPORARY TRIGGER y AFTER UPDATE ON t BEGIN SELECT 1; SELECT 2; End";
        assert_eq!(split(&format!("{trigger};SELECT 3")), [trigger, "SELECT 3"]);
    }

    #[test]
    fn begin_and_end_outside_triggers_split_normally() {
        assert_eq!(
            split("BEGIN; INSERT INTO t VALUES (1); END; BEGIN TRANSACTION; COMMIT"),
            [
                "BEGIN",
                "INSERT INTO t VALUES (1)",
                "END",
                "BEGIN TRANSACTION",
                "COMMIT"
            ]
        );
        assert_eq!(
            split("SELECT CASE WHEN 1 THEN 2 END; SELECT 3"),
            ["SELECT CASE WHEN 1 THEN 2 END", "SELECT 3"]
        );
        // CREATE of anything but a trigger is a plain statement.
        assert_eq!(
            split("CREATE TABLE trigger_log (begin_at INTEGER, backend TEXT); SELECT 1"),
            [
                "CREATE TABLE trigger_log (begin_at INTEGER, backend TEXT)",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn identifiers_containing_begin_or_end_are_not_keywords() {
        let trigger = "CREATE TRIGGER tr AFTER INSERT ON jobs BEGIN \
                       UPDATE jobs SET begin_at = 1, backend = 'x', end_at = new.endpoint, \
                       \"end\" = 2, [end] = 3, `end` = 4, end = 5; \
                       UPDATE jobs SET v = jobs.end + jobs.begin; \
                       END";
        assert_eq!(
            split(&format!("{trigger}; SELECT 1")),
            [trigger, "SELECT 1"]
        );
        // END in a literal, a quoted name or a comment does not close the body.
        let trigger = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 'END;', \"END\"; -- END;\n \
                       /* END; */ SELECT 1; END";
        assert_eq!(split(&format!("{trigger};SELECT 2")), [trigger, "SELECT 2"]);
        // A trigger whose body never started ends at its `;` (SQLite then reports the error).
        assert_eq!(
            split("CREATE TRIGGER broken; SELECT 1"),
            ["CREATE TRIGGER broken", "SELECT 1"]
        );
    }

    #[test]
    fn unterminated_tokens_run_to_the_end() {
        assert_eq!(
            split("SELECT 1; SELECT 'abc; SELECT 2"),
            ["SELECT 1", "SELECT 'abc; SELECT 2"]
        );
        assert_eq!(split("SELECT \"a; b"), ["SELECT \"a; b"]);
        assert_eq!(split("SELECT `a; b"), ["SELECT `a; b"]);
        assert_eq!(split("SELECT [a; b"), ["SELECT [a; b"]);
        assert_eq!(split("SELECT 1; /* open; SELECT 2"), ["SELECT 1"]);
        assert_eq!(
            split("SELECT 1 /* open; SELECT 2"),
            ["SELECT 1 /* open; SELECT 2"]
        );
        assert_eq!(
            split("SELECT 1 -- no newline;"),
            ["SELECT 1 -- no newline;"]
        );
        assert_eq!(split("SELECT 'it''"), ["SELECT 'it''"]);
        assert_eq!(
            split("CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2;"),
            ["CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2;"]
        );
        for sql in [
            "'", "\"", "`", "[", "-", "--", "/", "/*", "/*/", "*/", ";'", "'';",
        ] {
            let _ = split(sql);
        }
    }

    #[test]
    fn non_ascii_text_is_kept() {
        assert_eq!(
            split("SELECT 'héllo; wörld' AS café; SELECT 日本; SELECT \"ü;\""),
            [
                "SELECT 'héllo; wörld' AS café",
                "SELECT 日本",
                "SELECT \"ü;\""
            ]
        );
    }

    #[test]
    fn split_statements_run_one_by_one() {
        let conn = memory();
        let script = "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, kind TEXT);\n\
                      CREATE TABLE log (id INTEGER PRIMARY KEY, msg TEXT);\n\
                      CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN\n\
                        UPDATE t SET kind = CASE WHEN new.v > 0 THEN 'pos;' ELSE 'neg' END WHERE id = new.id;\n\
                        INSERT INTO log (msg) VALUES ('inserted; ' || new.id);\n\
                      END;\n\
                      -- a comment; with a semicolon\n\
                      INSERT INTO t (v) VALUES (5), (-1);";
        let statements = split(script);
        assert_eq!(statements.len(), 4);
        for statement in &statements {
            conn.execute(statement, []).unwrap();
        }
        let kinds: Vec<String> = conn
            .prepare("SELECT kind FROM t ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(kinds, ["pos;", "neg"]);
        let logged: i64 = conn
            .query_row("SELECT count(*) FROM log", [], |row| row.get(0))
            .unwrap();
        assert_eq!(logged, 2);
    }

    #[test]
    fn schema_changes_are_recognised_by_their_first_keyword() {
        for sql in [
            "CREATE TABLE t (id INTEGER PRIMARY KEY)",
            "create index i on t (x)",
            "  \n Alter TABLE t ADD COLUMN y",
            "DROP TABLE t",
            "-- leading comment\n/* another */ drop view v",
            "/*x*/CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
        ] {
            assert!(is_schema_change(sql), "{sql}");
        }
        for sql in [
            "",
            "   ",
            "-- CREATE TABLE t (x)",
            "/* DROP TABLE t */ SELECT 1",
            "SELECT 'CREATE'",
            "INSERT INTO t VALUES (1)",
            "EXPLAIN CREATE TABLE t (x)",
            "created_at",
            "DROPPED",
            "\"CREATE\" TABLE",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(!is_schema_change(sql), "{sql}");
        }
    }

    #[test]
    fn tables_that_cannot_be_replicated_are_named() {
        let violation = |schema: &str| {
            let conn = memory();
            conn.execute_batch(schema).unwrap();
            primary_key_violation(&conn).unwrap()
        };
        assert_eq!(violation(""), None);
        assert_eq!(
            violation(
                "CREATE TABLE rowid_alias (id INTEGER PRIMARY KEY, v TEXT);
                 CREATE TABLE auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
                 CREATE TABLE column_pk (name TEXT PRIMARY KEY NOT NULL, v TEXT);
                 CREATE TABLE table_pk (a INTEGER NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b));
                 CREATE TABLE without_rowid (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
                 CREATE VIRTUAL TABLE docs USING fts5 (body);
                 CREATE VIEW v AS SELECT * FROM auto;"
            ),
            None
        );
        // The first table by name.
        assert_eq!(
            violation(
                "CREATE TABLE zeta (a TEXT, b INTEGER);
                 CREATE TABLE alpha (x UNIQUE);
                 CREATE INDEX zeta_a ON zeta (a);"
            )
            .as_deref(),
            Some("Table \"alpha\" has no PRIMARY KEY")
        );
        let nullable = "has a PRIMARY KEY column";
        for (schema, table, column) in [
            ("CREATE TABLE kv (key TEXT PRIMARY KEY, v)", "kv", "key"),
            ("CREATE TABLE n (id INT PRIMARY KEY)", "n", "id"),
            (
                "CREATE TABLE pair (a INTEGER NOT NULL, b INTEGER, PRIMARY KEY (a, b))",
                "pair",
                "b",
            ),
        ] {
            assert_eq!(
                violation(schema).as_deref(),
                Some(
                    format!(
                        "Table {table:?} {nullable} {column:?} that may be NULL; declare it NOT NULL"
                    )
                    .as_str()
                ),
                "{schema}"
            );
        }
    }

    #[test]
    fn shell_names_are_quoted_only_when_needed() {
        assert_eq!(shell_name("t"), "t");
        assert_eq!(shell_name("_under_score9"), "_under_score9");
        assert_eq!(shell_name("order"), "\"order\"");
        assert_eq!(shell_name("Select"), "\"Select\"");
        assert_eq!(shell_name("my table"), "\"my table\"");
        assert_eq!(shell_name("9lives"), "\"9lives\"");
        assert_eq!(shell_name("x\"y"), "\"x\"\"y\"");
        assert_eq!(shell_name("café"), "\"café\"");
        assert_eq!(shell_name(""), "\"\"");
    }

    #[test]
    fn keyword_list_is_sqlite_s() {
        // SAFETY: a plain query of SQLite's static keyword table.
        let count = unsafe { rusqlite::ffi::sqlite3_keyword_count() };
        let mut names = Vec::new();
        for i in 0..count {
            let mut name = std::ptr::null();
            let mut len = 0;
            // SAFETY: `i` is in range and the outputs are valid pointers; SQLite returns a
            // static, non-NUL-terminated ASCII name of `len` bytes.
            let rc = unsafe { rusqlite::ffi::sqlite3_keyword_name(i, &mut name, &mut len) };
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
            let len = usize::try_from(len).unwrap();
            // SAFETY: SQLite gave a pointer to `len` static bytes.
            let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) };
            names.push(String::from_utf8(bytes.to_vec()).unwrap());
        }
        names.sort();
        assert_eq!(names, KEYWORDS);
    }

    #[test]
    fn literals_are_written_like_the_shell() {
        assert_eq!(literal(ValueRef::Null), "NULL");
        assert_eq!(literal(ValueRef::Integer(-42)), "-42");
        assert_eq!(literal(ValueRef::Real(1.0)), "1.0");
        assert_eq!(literal(ValueRef::Real(-0.5)), "-0.5");
        assert_eq!(literal(ValueRef::Real(1.5e300)), "1.5e300");
        assert_eq!(literal(ValueRef::Real(1e-7)), "1e-7");
        assert_eq!(literal(ValueRef::Real(f64::INFINITY)), "9.0e+999");
        assert_eq!(literal(ValueRef::Real(f64::NEG_INFINITY)), "-9.0e+999");
        assert_eq!(literal(ValueRef::Real(f64::NAN)), "NULL");
        assert_eq!(literal(ValueRef::Text(b"it's")), "'it''s'");
        assert_eq!(literal(ValueRef::Text(b"a\nb")), "'a\nb'");
        assert_eq!(literal(ValueRef::Text(b"\xff")), "CAST(X'ff' AS TEXT)");
        assert_eq!(literal(ValueRef::Text(b"a\0b")), "CAST(X'610062' AS TEXT)");
        assert_eq!(literal(ValueRef::Blob(b"\x00\xAB")), "X'00ab'");
        assert_eq!(literal(ValueRef::Blob(b"")), "X''");
    }

    #[test]
    fn literals_round_trip_through_sqlite() {
        let conn = memory();
        let reals = [
            0.1,
            1.0,
            -0.5,
            1.5e300,
            1e16,
            1e-7,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            std::f64::consts::PI,
            123_456_789.012_345_68,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for r in reals {
            let sql = format!("SELECT {}, typeof({0})", literal(ValueRef::Real(r)));
            let (back, kind): (f64, String) = conn
                .query_row(&sql, [], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            assert_eq!(back.to_bits(), r.to_bits(), "{sql}");
            assert_eq!(kind, "real", "{sql}");
        }
        for i in [0, -1, i64::MAX, i64::MIN] {
            let sql = format!("SELECT {}, typeof({0})", literal(ValueRef::Integer(i)));
            let (back, kind): (i64, String) = conn
                .query_row(&sql, [], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            assert_eq!((back, kind.as_str()), (i, "integer"), "{sql}");
        }
        for text in [
            &b"plain"[..],
            b"it's; ok",
            b"line\nbreak\r\n",
            b"\xff\xfe",
            b"nul\0in",
        ] {
            let sql = format!("SELECT CAST({} AS BLOB)", literal(ValueRef::Text(text)));
            let back: Vec<u8> = conn.query_row(&sql, [], |row| row.get(0)).unwrap();
            assert_eq!(back, text, "{sql}");
        }
    }

    const FIXTURE: &str = "
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, note TEXT, score REAL, photo BLOB);
        INSERT INTO people VALUES (1, 'O''Brien', 'semi; colon', 1.0, X'00ff10');
        INSERT INTO people VALUES (2, 'multi\nline\r\ntext', NULL, 1.5e300, NULL);
        INSERT INTO people VALUES (3, '-- not a comment', '/* nor this */', -0.25, X'');
        INSERT INTO people VALUES (4, 'x', 'BEGIN; END;', 0.1, CAST('abc' AS BLOB));
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, person INTEGER, what TEXT);
        INSERT INTO events (person, what) VALUES (1, 'joined'), (2, 'left'), (1, 'rejoined');
        DELETE FROM events WHERE id = 3;
        CREATE TABLE \"order\" (\"key\" TEXT PRIMARY KEY, \"value\") WITHOUT ROWID;
        INSERT INTO \"order\" VALUES ('b', 2), ('a', 'one');
        CREATE TABLE _microcluster_x (id INTEGER PRIMARY KEY AUTOINCREMENT, secret TEXT);
        INSERT INTO _microcluster_x (secret) VALUES ('hidden');
        CREATE INDEX _microcluster_x_secret ON _microcluster_x (secret);
        CREATE TRIGGER _microcluster_x_trg AFTER INSERT ON _microcluster_x BEGIN SELECT 1; END;
        CREATE INDEX people_name ON people (name);
        CREATE TRIGGER people_ins AFTER INSERT ON people BEGIN
          INSERT INTO events (person, what) VALUES (new.id, CASE WHEN new.score > 0 THEN 'good' ELSE 'bad' END);
        END;
        CREATE VIEW good_people AS SELECT name FROM people WHERE score > 0;
    ";

    fn fixture() -> Connection {
        let conn = memory();
        conn.execute_batch(FIXTURE).unwrap();
        conn
    }

    #[test]
    fn dump_round_trips_and_skips_the_prefix() {
        let source = fixture();
        let text = dump(&source, false, "_microcluster_").unwrap();
        assert!(text.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"));
        assert!(text.ends_with("COMMIT;\n"));
        assert!(!text.contains("_microcluster_"), "{text}");
        assert!(!text.contains("CREATE TABLE sqlite_"), "{text}");

        let target = memory();
        target.execute_batch(&text).unwrap();
        let mut expected = contents(&source);
        expected.retain(|(name, _)| !name.starts_with("_microcluster_"));
        for (name, rows) in &mut expected {
            if name == "sqlite_sequence" {
                rows.retain(|row| !row.contains("_microcluster_"));
            }
        }
        assert_eq!(contents(&target), expected);
        assert!(expected.iter().any(|(name, _)| name == "sqlite_sequence"));

        // The schema is the same (apart from the skipped objects), and the trigger works.
        let mut expected_schema = schema(&source);
        expected_schema.retain(|(_, name, _)| !name.starts_with("_microcluster_"));
        assert_eq!(schema(&target), expected_schema);
        target
            .execute("INSERT INTO people (id, score) VALUES (10, 2.0)", [])
            .unwrap();
        let (id, what): (i64, String) = target
            .query_row("SELECT id, what FROM events WHERE person = 10", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        // AUTOINCREMENT continues after the deleted id 3.
        assert_eq!((id, what.as_str()), (4, "good"));
    }

    #[test]
    fn dump_text_has_the_shell_s_shape() {
        let conn = memory();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v);
             INSERT INTO t (v) VALUES ('a''b'), (2.0), (NULL), (X'0A');
             CREATE TABLE \"select\" (id INTEGER PRIMARY KEY);
             INSERT INTO \"select\" VALUES (7);
             CREATE INDEX t_v ON t (v);
             CREATE VIEW w AS SELECT v FROM t;",
        )
        .unwrap();
        assert_eq!(
            dump(&conn, false, "").unwrap(),
            "PRAGMA foreign_keys=OFF;\n\
             BEGIN TRANSACTION;\n\
             CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v);\n\
             INSERT INTO t VALUES(1,'a''b');\n\
             INSERT INTO t VALUES(2,2.0);\n\
             INSERT INTO t VALUES(3,NULL);\n\
             INSERT INTO t VALUES(4,X'0a');\n\
             CREATE TABLE \"select\" (id INTEGER PRIMARY KEY);\n\
             INSERT INTO \"select\" VALUES(7);\n\
             DELETE FROM sqlite_sequence;\n\
             INSERT INTO sqlite_sequence VALUES('t',4);\n\
             CREATE INDEX t_v ON t (v);\n\
             CREATE VIEW w AS SELECT v FROM t;\n\
             COMMIT;\n"
        );
        assert_eq!(
            dump(&memory(), false, "").unwrap(),
            "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCOMMIT;\n"
        );
    }

    #[test]
    fn schema_only_dump_has_no_rows() {
        let source = fixture();
        let text = dump(&source, true, "_microcluster_").unwrap();
        assert!(text.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"));
        assert!(text.ends_with("COMMIT;\n"));
        // The only INSERT is the one inside the trigger body.
        assert_eq!(text.matches("INSERT INTO").count(), 1, "{text}");
        assert!(
            !text.lines().any(|line| line.starts_with("INSERT")),
            "{text}"
        );
        assert!(!text.contains("DELETE FROM sqlite_sequence"), "{text}");
        assert!(!text.contains("_microcluster_"), "{text}");
        let target = memory();
        target.execute_batch(&text).unwrap();
        let mut expected_schema = schema(&source);
        expected_schema.retain(|(_, name, _)| !name.starts_with("_microcluster_"));
        assert_eq!(schema(&target), expected_schema);
        for (name, rows) in contents(&target) {
            assert!(rows.is_empty(), "{name}");
        }
    }

    #[test]
    fn empty_prefix_skips_nothing() {
        let source = fixture();
        let text = dump(&source, false, "").unwrap();
        assert!(text.contains("CREATE TABLE _microcluster_x"));
        assert!(text.contains("CREATE INDEX _microcluster_x_secret"));
        assert!(text.contains("CREATE TRIGGER _microcluster_x_trg"));
        let target = memory();
        target.execute_batch(&text).unwrap();
        assert_eq!(contents(&target), contents(&source));
        assert_eq!(schema(&target), schema(&source));
    }

    #[test]
    fn sequence_rows_are_left_out_when_only_skipped_tables_use_them() {
        let source = memory();
        source
            .execute_batch(
                "CREATE TABLE _microcluster_a (id INTEGER PRIMARY KEY AUTOINCREMENT);
                 INSERT INTO _microcluster_a DEFAULT VALUES;
                 CREATE TABLE plain (id INTEGER PRIMARY KEY, autoincrement_note TEXT);
                 INSERT INTO plain VALUES (1, 'AUTOINCREMENT');",
            )
            .unwrap();
        let text = dump(&source, false, "_microcluster_").unwrap();
        assert!(!text.contains("sqlite_sequence"), "{text}");
        let target = memory();
        target.execute_batch(&text).unwrap();
        assert_eq!(
            contents(&target),
            [(
                "plain".to_owned(),
                vec!["Integer:1,Text:'AUTOINCREMENT'".to_owned()]
            )]
        );
    }

    #[test]
    fn generated_columns_and_odd_names_round_trip() {
        let source = memory();
        source
            .execute_batch(
                "CREATE TABLE \"we\"\"ird; name\" (a INTEGER PRIMARY KEY, b TEXT,
                   c INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL,
                   d TEXT GENERATED ALWAYS AS (b || '!') STORED, \"e f\" BLOB);
                 INSERT INTO \"we\"\"ird; name\" (a, b, \"e f\") VALUES (1, 'x', X'01'), (2, NULL, NULL);
                 CREATE TABLE [group] (id INTEGER PRIMARY KEY, t TEXT);
                 INSERT INTO [group] VALUES (1, CAST(X'ff00' AS TEXT));",
            )
            .unwrap();
        let text = dump(&source, false, "").unwrap();
        assert!(
            text.contains("INSERT INTO \"we\"\"ird; name\" VALUES(1,'x',X'01');"),
            "{text}"
        );
        assert!(
            text.contains("INSERT INTO \"group\" VALUES(1,CAST(X'ff00' AS TEXT));"),
            "{text}"
        );
        let target = memory();
        target.execute_batch(&text).unwrap();
        assert_eq!(contents(&target), contents(&source));
    }

    #[test]
    fn virtual_tables_are_dumped_like_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let source = memory();
        source
            .execute_batch(
                "CREATE VIRTUAL TABLE docs USING fts5 (body);
                 INSERT INTO docs VALUES ('hello world'), ('goodbye; moon');",
            )
            .unwrap();
        let text = dump(&source, false, "").unwrap();
        assert!(text.contains(
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)\
             VALUES('table','docs','docs',0,'CREATE VIRTUAL TABLE docs USING fts5 (body)');\n"
        ));
        assert!(text.ends_with("PRAGMA writable_schema=OFF;\nCOMMIT;\n"));
        let path = dir.path().join("copy.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(&text)
            .unwrap();
        let target = Connection::open(&path).unwrap();
        let found: String = target
            .query_row("SELECT body FROM docs WHERE docs MATCH 'moon'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(found, "goodbye; moon");
        assert_eq!(contents(&target), contents(&source));
    }

    #[test]
    fn values_become_json() {
        assert_eq!(value_to_json(ValueRef::Null), Value::Null);
        assert_eq!(value_to_json(ValueRef::Integer(-7)), json!(-7));
        assert_eq!(value_to_json(ValueRef::Real(2.5)), json!(2.5));
        assert_eq!(value_to_json(ValueRef::Real(f64::INFINITY)), Value::Null);
        assert_eq!(value_to_json(ValueRef::Real(f64::NAN)), Value::Null);
        assert_eq!(value_to_json(ValueRef::Text(b"hi")), json!("hi"));
        assert_eq!(value_to_json(ValueRef::Blob(b"ab")), json!("ab"));
        assert_eq!(
            value_to_json(ValueRef::Blob(b"a\xffb")),
            json!("a\u{fffd}b")
        );
    }

    #[test]
    fn select_results_keep_key_order_and_types() {
        let conn = memory();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB);
             INSERT INTO t VALUES (1, 'a', 1.5, X'6869'), (2, NULL, NULL, NULL);",
        )
        .unwrap();
        let result = run_query(
            &conn,
            "SELECT id, name AS who, score, data FROM t ORDER BY id",
        )
        .unwrap();
        assert_eq!(
            result.to_string(),
            r#"{"type":"select","columns":["id","who","score","data"],"rows":[[1,"a",1.5,"hi"],[2,null,null,null]],"rows_affected":0}"#
        );
        let empty = run_query(&conn, "SELECT id FROM t WHERE id > 5").unwrap();
        assert_eq!(
            empty.to_string(),
            r#"{"type":"select","columns":["id"],"rows":[],"rows_affected":0}"#
        );
        for sql in [
            "PRAGMA table_info(t)",
            "VALUES (1)",
            "EXPLAIN SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert_eq!(run_query(&conn, sql).unwrap()["type"], "select", "{sql}");
        }
    }

    #[test]
    fn exec_results_count_changed_rows() {
        let conn = memory();
        let exec = |sql: &str| run_query(&conn, sql).unwrap().to_string();
        assert_eq!(
            exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"),
            r#"{"type":"exec","columns":[],"rows":[],"rows_affected":0}"#
        );
        assert_eq!(
            exec("INSERT INTO t (v) VALUES (1), (2), (3)"),
            r#"{"type":"exec","columns":[],"rows":[],"rows_affected":3}"#
        );
        // DDL right after a write does not report the write's count.
        assert_eq!(
            exec("CREATE INDEX t_v ON t (v)"),
            r#"{"type":"exec","columns":[],"rows":[],"rows_affected":0}"#
        );
        assert_eq!(
            run_query(&conn, "UPDATE t SET v = v + 1 WHERE v > 1").unwrap()["rows_affected"],
            2
        );
        assert_eq!(
            run_query(&conn, "DELETE FROM t WHERE v > 100").unwrap()["rows_affected"],
            0
        );
        assert_eq!(
            run_query(&conn, "DELETE FROM t").unwrap()["rows_affected"],
            3
        );
        assert!(run_query(&conn, "SELEC 1").is_err());
        assert!(run_query(&conn, "INSERT INTO missing VALUES (1)").is_err());
    }

    #[test]
    fn error_texts_depend_on_whether_rows_are_returned() {
        let conn = memory();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .unwrap();
        assert!(returns_rows(&conn, "SELECT * FROM t").unwrap());
        assert!(returns_rows(&conn, "PRAGMA table_info(t)").unwrap());
        assert!(returns_rows(&conn, "INSERT INTO t VALUES (1) RETURNING id").unwrap());
        assert!(!returns_rows(&conn, "INSERT INTO t VALUES (1)").unwrap());
        assert!(!returns_rows(&conn, "DROP TABLE t").unwrap());
        assert!(returns_rows(&conn, "SELECT * FROM missing").is_err());

        let err = run_query(&conn, "INSERT INTO t VALUES (1), (1)").unwrap_err();
        assert_eq!(
            error_text(false, &err),
            format!("Failed to exec query: {err}")
        );
        assert!(
            error_text(false, &err).starts_with("Failed to exec query: UNIQUE constraint failed")
        );
        assert_eq!(error_text(true, &"boom"), "Failed to execute query: boom");
        assert_eq!(error_text(false, &"boom"), "Failed to exec query: boom");
    }
}
