//! How `microctl` prints lists and SQL results (SPEC §16.2 "Output formats" and `sql`).
//!
//! Every function here is pure: it returns the text to print, ending with a newline unless
//! it is empty.

use std::cmp::Ordering;

use microcluster::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The header of `cluster list`.
const MEMBER_HEADER: [&str; 5] = ["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"];

/// The header of `tokens list`.
const TOKEN_HEADER: [&str; 3] = ["NAME", "TOKENS", "EXPIRES AT"];

/// The columns of `cluster list --local` (SPEC §16.2).
const LOCAL_HEADER: [&str; 4] = ["ID", "NAME", "ADDRESS", "ROLE"];

/// How a list is printed (`-f`/`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A bordered ASCII table with a header.
    Table,
    /// Aligned columns with a header and no borders.
    Compact,
    /// RFC 4180 rows without a header.
    Csv,
    /// A JSON array of flat objects.
    Json,
    /// A YAML list of the same flat objects.
    Yaml,
}

/// A cluster member as `GET /core/1.0/cluster` returns it (SPEC §5.5).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ClusterMember {
    /// The member name.
    pub name: String,
    /// The member address, `IP:port`.
    pub address: String,
    /// The member's server certificate, PEM encoded.
    pub certificate: String,
    /// `voter`, `stand-by`, `spare` or `PENDING`.
    pub role: String,
    /// The member's internal schema version.
    pub schema_internal_version: u64,
    /// The member's external (application) schema version.
    pub schema_external_version: u64,
    /// RFC 3339; the zero time `0001-01-01T00:00:00Z` means never.
    pub last_heartbeat: Option<String>,
    /// The status of SPEC §8.5.
    pub status: String,
    /// The member's API extensions; a bare string is read as a one-element list.
    #[serde(deserialize_with = "one_or_many")]
    pub extensions: Vec<String>,
}

/// A join token as `GET /core/control/tokens` returns it (SPEC §5.5).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TokenRecord {
    /// The name of the member the token is for.
    pub name: String,
    /// Always empty: secrets cannot be listed again (SPEC §6.2).
    pub token: String,
    /// RFC 3339; the zero time `0001-01-01T00:00:00Z` means never.
    pub expires_at: Option<String>,
}

/// The answer of `POST /core/internal/sql` (SPEC §12), with upstream's capital `R`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SqlBatch {
    /// One result per statement, in order.
    #[serde(rename = "Results", default)]
    pub results: Vec<SqlResult>,
}

/// The result of one SQL statement.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SqlResult {
    /// `select` for a statement that yields columns, `exec` otherwise.
    #[serde(rename = "type")]
    pub kind: String,
    /// The column names of a `select`.
    pub columns: Vec<String>,
    /// The rows of a `select`.
    pub rows: Vec<Vec<Value>>,
    /// The rows changed by an `exec`.
    pub rows_affected: i64,
}

/// The flat member object of the `json` and `yaml` formats.
#[derive(Serialize)]
struct MemberObject<'a> {
    name: &'a str,
    address: &'a str,
    role: &'a str,
    fingerprint: String,
    status: &'a str,
    last_heartbeat: Option<&'a str>,
    schema_internal_version: u64,
    schema_external_version: u64,
    extensions: &'a [String],
}

/// The flat token object of the `json` and `yaml` formats.
#[derive(Serialize)]
struct TokenObject<'a> {
    name: &'a str,
    token: &'a str,
    expires_at: Option<&'a str>,
}

/// Reads a list of strings that may also be sent as one bare string (or `null`).
fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    })
}

/// A time as sent by the server, or `None` when it stands for "never": missing, empty, or
/// Go's zero time `0001-01-01T00:00:00Z` (SPEC §5.5).
fn time_or_never(time: Option<&str>) -> Option<&str> {
    time.filter(|time| !time.is_empty() && !time.starts_with("0001-01-01T00:00:00"))
}

/// Prints `cluster list`: columns `NAME`, `ADDRESS`, `ROLE`, `FINGERPRINT`, `STATUS`, or flat
/// member objects for `json` and `yaml`. Fails if a member's certificate is not a PEM
/// certificate.
pub fn members(format: Format, members: &[ClusterMember]) -> Result<String> {
    let entries = members
        .iter()
        .map(|member| {
            let fingerprint =
                microcluster::certs::fingerprint_pem(&member.certificate).map_err(|err| {
                    err.context(format!(
                        "Invalid certificate of cluster member {:?}: ",
                        member.name
                    ))
                })?;
            let row = vec![
                member.name.clone(),
                member.address.clone(),
                member.role.clone(),
                fingerprint.clone(),
                member.status.clone(),
            ];
            let object = MemberObject {
                name: &member.name,
                address: &member.address,
                role: &member.role,
                fingerprint,
                status: &member.status,
                last_heartbeat: time_or_never(member.last_heartbeat.as_deref()),
                schema_internal_version: member.schema_internal_version,
                schema_external_version: member.schema_external_version,
                extensions: &member.extensions,
            };
            Ok((row, object))
        })
        .collect::<Result<Vec<_>>>()?;
    render(format, &MEMBER_HEADER, entries)
}

/// Prints `tokens list`: columns `NAME`, `TOKENS`, `EXPIRES AT` (RFC 3339 or `never`), or flat
/// token objects (`expires_at` is `null` for never) for `json` and `yaml`.
pub fn tokens(format: Format, tokens: &[TokenRecord]) -> Result<String> {
    let entries = tokens
        .iter()
        .map(|token| {
            let expires_at = time_or_never(token.expires_at.as_deref());
            let row = vec![
                token.name.clone(),
                token.token.clone(),
                expires_at.unwrap_or("never").to_string(),
            ];
            let object = TokenObject {
                name: &token.name,
                token: &token.token,
                expires_at,
            };
            (row, object)
        })
        .collect();
    render(format, &TOKEN_HEADER, entries)
}

/// Prints `cluster list --local`: columns `ID`, `NAME`, `ADDRESS`, `ROLE`, or `{id, name,
/// address, role}` objects for `json` and `yaml`.
pub fn local_members(
    format: Format,
    members: &[microcluster::membership::local::LocalMember],
) -> Result<String> {
    let entries = members
        .iter()
        .map(|member| {
            let row = vec![
                member.id.to_string(),
                member.name.clone(),
                member.address.clone(),
                member.role.clone(),
            ];
            (row, member)
        })
        .collect();
    render(format, &LOCAL_HEADER, entries)
}

/// Sorts `entries` naturally by their row and prints the rows (`table`, `compact`, `csv`) or
/// the objects (`json`, `yaml`).
fn render<T: Serialize>(
    format: Format,
    header: &[&str],
    mut entries: Vec<(Vec<String>, T)>,
) -> Result<String> {
    entries.sort_by(|(a, _), (b, _)| natural_cmp_rows(a, b));
    let (rows, objects): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
    match format {
        Format::Table => Ok(table(header, &rows)),
        Format::Compact => Ok(compact(header, &rows)),
        Format::Csv => Ok(csv(&rows)),
        Format::Json => serde_json::to_string(&objects)
            .map(|text| text + "\n")
            .map_err(|err| Error::internal(format!("Failed to format as JSON: {err}"))),
        Format::Yaml => serde_yaml_ng::to_string(&objects)
            .map_err(|err| Error::internal(format!("Failed to format as YAML: {err}"))),
    }
}

/// Compares two strings naturally: runs of ASCII digits compare by their value, so `c2` comes
/// before `c10`; everything else compares character by character.
///
/// ```
/// use std::cmp::Ordering;
/// use microcluster_examples::output::natural_cmp;
/// assert_eq!(natural_cmp("c2", "c10"), Ordering::Less);
/// assert_eq!(natural_cmp("c10", "b99"), Ordering::Greater);
/// ```
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let split_digits = |text: &str| -> (usize, usize) {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        (end, end - text[..end].trim_start_matches('0').len())
    };
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let ((a_end, a_zeros), (b_end, b_zeros)) = (split_digits(a), split_digits(b));
                let (a_value, b_value) = (&a[a_zeros..a_end], &b[b_zeros..b_end]);
                let order = a_value
                    .len()
                    .cmp(&b_value.len())
                    .then_with(|| a_value.cmp(b_value))
                    .then_with(|| a_zeros.cmp(&b_zeros));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (&a[a_end..], &b[b_end..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

/// Compares rows column by column with [`natural_cmp`].
fn natural_cmp_rows(a: &[String], b: &[String]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(a, b)| natural_cmp(a, b))
        .find(|order| *order != Ordering::Equal)
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// The display width of each column: its widest line, header included.
fn column_widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let width = |cell: &str| cell.split('\n').map(|line| line.chars().count()).max();
    let mut widths: Vec<usize> = header.iter().map(|cell| width(cell).unwrap_or(0)).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            let cell_width = width(cell).unwrap_or(0);
            match widths.get_mut(column) {
                Some(width) => *width = (*width).max(cell_width),
                None => widths.push(cell_width),
            }
        }
    }
    widths
}

/// Lays out one row; a cell with newlines spans several lines.
fn layout_row<S: AsRef<str>>(
    cells: &[S],
    widths: &[usize],
    (left, separator, right): (&str, &str, &str),
) -> String {
    let lines: Vec<Vec<&str>> = cells
        .iter()
        .map(|cell| cell.as_ref().split('\n').collect())
        .collect();
    let height = lines.iter().map(Vec::len).max().unwrap_or(1);
    let mut out = String::new();
    for line in 0..height {
        let padded: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(column, width)| {
                let text = lines
                    .get(column)
                    .and_then(|cell| cell.get(line))
                    .copied()
                    .unwrap_or("");
                format!("{text}{}", " ".repeat(width - text.chars().count()))
            })
            .collect();
        let text = format!("{left}{}{right}", padded.join(separator));
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A bordered ASCII table with a header; the rows are printed in the order given.
///
/// ```
/// use microcluster_examples::output::table;
/// let text = table(&["NAME"], &[vec!["c1".to_string()]]);
/// assert_eq!(text, "+------+\n| NAME |\n+------+\n| c1   |\n+------+\n");
/// ```
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths = column_widths(header, rows);
    let border: String = widths
        .iter()
        .map(|width| format!("+{}", "-".repeat(width + 2)))
        .collect::<String>()
        + "+\n";
    let style = ("| ", " | ", " |");
    let mut out = border.clone();
    out.push_str(&layout_row(header, &widths, style));
    out.push_str(&border);
    for row in rows {
        out.push_str(&layout_row(row, &widths, style));
    }
    if !rows.is_empty() {
        out.push_str(&border);
    }
    out
}

/// Aligned columns with a header, two spaces apart, without borders or trailing spaces.
pub fn compact(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths = column_widths(header, rows);
    let style = ("", "  ", "");
    let mut out = layout_row(header, &widths, style);
    for row in rows {
        out.push_str(&layout_row(row, &widths, style));
    }
    out
}

/// RFC 4180 rows without a header, each ended by `\n` (as Go's `encoding/csv` writes them).
/// A field is quoted when it holds a comma, a quote, a line break or starts with a space;
/// quotes inside are doubled.
pub fn csv(rows: &[Vec<String>]) -> String {
    let field = |text: &String| {
        let quote =
            text.contains([',', '"', '\r', '\n']) || text.starts_with(|c: char| c.is_whitespace());
        if quote {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.clone()
        }
    };
    rows.iter()
        .map(|row| row.iter().map(field).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// One SQL value as a table cell: JSON `null` prints as `NULL` (so it differs from an empty
/// string), strings and numbers print plainly, anything else as JSON.
fn sql_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Prints the results of `microctl sql`: a `select` as a bordered table with a header, an
/// `exec` as `Rows affected: N`. With several results, each is preceded by `=> Query <i>:` and
/// a blank line (`i` from 0) and followed by a blank line.
pub fn sql_results(results: &[SqlResult]) -> String {
    let several = results.len() > 1;
    let mut out = String::new();
    for (index, result) in results.iter().enumerate() {
        if several {
            out.push_str(&format!("=> Query {index}:\n\n"));
        }
        if result.kind == "select" {
            let header: Vec<&str> = result.columns.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = result
                .rows
                .iter()
                .map(|row| row.iter().map(sql_value).collect())
                .collect();
            out.push_str(&table(&header, &rows));
        } else {
            out.push_str(&format!("Rows affected: {}\n", result.rows_affected));
        }
        if several {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter()
            .map(|row| row.iter().map(|cell| cell.to_string()).collect())
            .collect()
    }

    fn member(name: &str, address: &str, heartbeat: &str) -> (ClusterMember, String) {
        let pair = microcluster::certs::generate(name).unwrap();
        let fingerprint = microcluster::certs::fingerprint_pem(&pair.cert_pem).unwrap();
        let member: ClusterMember = serde_json::from_value(json!({
            "name": name,
            "address": address,
            "certificate": pair.cert_pem,
            "role": "voter",
            "schema_internal_version": 1,
            "schema_external_version": 2,
            "last_heartbeat": heartbeat,
            "status": "ONLINE",
            "extensions": ["internal:runtime_extension_v1"],
            "secret": ""
        }))
        .unwrap();
        (member, fingerprint)
    }

    #[test]
    fn natural_sort_orders_numbers_by_value() {
        let mut names = vec!["c10", "c2", "c1", "b", "c02", "c1a", ""];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["", "b", "c1", "c1a", "c2", "c02", "c10"]);
        assert_eq!(natural_cmp("x99y", "x100a"), Ordering::Less);
        assert_eq!(natural_cmp("same", "same"), Ordering::Equal);
    }

    #[test]
    fn table_has_borders_header_and_multiline_cells() {
        let text = table(
            &["NAME", "VALUE"],
            &rows(&[&["a", "one\ntwo"], &["long-name", ""]]),
        );
        assert_eq!(
            text,
            "+-----------+-------+\n\
             | NAME      | VALUE |\n\
             +-----------+-------+\n\
             | a         | one   |\n\
             |           | two   |\n\
             | long-name |       |\n\
             +-----------+-------+\n"
        );
        assert_eq!(
            table(&["A"], &[]),
            "+---+\n| A |\n+---+\n",
            "an empty table is just its header"
        );
    }

    #[test]
    fn compact_aligns_columns_without_borders() {
        let text = compact(&["NAME", "ROLE"], &rows(&[&["c1", "voter"], &["c10", ""]]));
        assert_eq!(text, "NAME  ROLE\nc1    voter\nc10\n");
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines_without_header() {
        let text = csv(&rows(&[
            &["plain", "a,b", "say \"hi\""],
            &["two\nlines", " lead", ""],
        ]));
        assert_eq!(
            text,
            "plain,\"a,b\",\"say \"\"hi\"\"\"\n\"two\nlines\",\" lead\",\n"
        );
    }

    #[test]
    fn members_in_every_format_sorted_naturally() {
        let (c10, fp10) = member("c10", "127.0.0.1:9010", "0001-01-01T00:00:00Z");
        let (c2, fp2) = member("c2", "127.0.0.1:9002", "2025-01-31T12:00:00Z");
        let list = [c10, c2];
        assert_eq!(fp2.len(), 64);
        assert!(
            fp2.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );

        let text = members(Format::Table, &list).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[1].starts_with("| NAME | ADDRESS        | ROLE  | FINGERPRINT"));
        assert!(lines[1].ends_with("| STATUS |"));
        assert_eq!(
            lines[3],
            format!("| c2   | 127.0.0.1:9002 | voter | {fp2} | ONLINE |")
        );
        assert_eq!(
            lines[4],
            format!("| c10  | 127.0.0.1:9010 | voter | {fp10} | ONLINE |")
        );

        assert_eq!(
            members(Format::Csv, &list).unwrap(),
            format!(
                "c2,127.0.0.1:9002,voter,{fp2},ONLINE\nc10,127.0.0.1:9010,voter,{fp10},ONLINE\n"
            )
        );
        assert_eq!(
            members(Format::Compact, &list).unwrap(),
            format!(
                "NAME  ADDRESS         ROLE   FINGERPRINT{}  STATUS\n\
                 c2    127.0.0.1:9002  voter  {fp2}  ONLINE\n\
                 c10   127.0.0.1:9010  voter  {fp10}  ONLINE\n",
                " ".repeat(64 - "FINGERPRINT".len())
            )
        );

        let json_text = members(Format::Json, &list).unwrap();
        assert!(json_text.ends_with("]\n"));
        let parsed: Value = serde_json::from_str(&json_text).unwrap();
        let expected = json!([
            {"name": "c2", "address": "127.0.0.1:9002", "role": "voter", "fingerprint": fp2,
             "status": "ONLINE", "last_heartbeat": "2025-01-31T12:00:00Z",
             "schema_internal_version": 1, "schema_external_version": 2,
             "extensions": ["internal:runtime_extension_v1"]},
            {"name": "c10", "address": "127.0.0.1:9010", "role": "voter", "fingerprint": fp10,
             "status": "ONLINE", "last_heartbeat": null,
             "schema_internal_version": 1, "schema_external_version": 2,
             "extensions": ["internal:runtime_extension_v1"]}
        ]);
        assert_eq!(parsed, expected);

        let yaml_text = members(Format::Yaml, &list).unwrap();
        assert!(yaml_text.starts_with("- name: c2\n  address: 127.0.0.1:9002\n  role: voter\n"));
        assert!(yaml_text.contains("  last_heartbeat: null\n"));
        let parsed: Value = serde_yaml_ng::from_str(&yaml_text).unwrap();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn a_member_with_a_bad_certificate_is_an_error() {
        let (mut bad, _) = member("c1", "127.0.0.1:9001", "");
        bad.certificate = "garbage".to_string();
        let err = members(Format::Table, &[bad]).unwrap_err();
        assert!(
            err.message()
                .starts_with("Invalid certificate of cluster member \"c1\": "),
            "{err}"
        );
    }

    #[test]
    fn extensions_may_be_a_bare_string() {
        let member: ClusterMember =
            serde_json::from_value(json!({"name": "c1", "extensions": "one"})).unwrap();
        assert_eq!(member.extensions, ["one"]);
        let member: ClusterMember =
            serde_json::from_value(json!({"name": "c1", "extensions": null})).unwrap();
        assert!(member.extensions.is_empty());
    }

    #[test]
    fn tokens_show_never_and_null() {
        let list: Vec<TokenRecord> = serde_json::from_value(json!([
            {"name": "c3", "token": "", "expires_at": "0001-01-01T00:00:00Z"},
            {"name": "c2", "token": "", "expires_at": "2025-01-31T15:00:00Z"}
        ]))
        .unwrap();
        assert_eq!(
            tokens(Format::Table, &list).unwrap(),
            "+------+--------+----------------------+\n\
             | NAME | TOKENS | EXPIRES AT           |\n\
             +------+--------+----------------------+\n\
             | c2   |        | 2025-01-31T15:00:00Z |\n\
             | c3   |        | never                |\n\
             +------+--------+----------------------+\n"
        );
        assert_eq!(
            tokens(Format::Csv, &list).unwrap(),
            "c2,,2025-01-31T15:00:00Z\nc3,,never\n"
        );
        assert_eq!(
            tokens(Format::Json, &list).unwrap(),
            "[{\"name\":\"c2\",\"token\":\"\",\"expires_at\":\"2025-01-31T15:00:00Z\"},\
             {\"name\":\"c3\",\"token\":\"\",\"expires_at\":null}]\n"
        );
        assert_eq!(
            tokens(Format::Yaml, &list).unwrap(),
            "- name: c2\n  token: ''\n  expires_at: 2025-01-31T15:00:00Z\n\
             - name: c3\n  token: ''\n  expires_at: null\n"
        );
        assert_eq!(tokens(Format::Json, &[]).unwrap(), "[]\n");
        assert_eq!(tokens(Format::Csv, &[]).unwrap(), "");
    }

    #[test]
    fn sql_single_select_and_exec() {
        let batch: SqlBatch = serde_json::from_value(json!({"Results": [
            {"type": "select", "columns": ["id", "key", "value"],
             "rows": [[1, "a", null], [20, "bb", 1.5]], "rows_affected": 0}
        ]}))
        .unwrap();
        assert_eq!(
            sql_results(&batch.results),
            "+----+-----+-------+\n\
             | id | key | value |\n\
             +----+-----+-------+\n\
             | 1  | a   | NULL  |\n\
             | 20 | bb  | 1.5   |\n\
             +----+-----+-------+\n"
        );
        let exec: SqlBatch = serde_json::from_value(json!({"Results": [
            {"type": "exec", "columns": [], "rows": [], "rows_affected": 3}
        ]}))
        .unwrap();
        assert_eq!(sql_results(&exec.results), "Rows affected: 3\n");
    }

    #[test]
    fn sql_several_results_are_numbered_from_zero() {
        let batch: SqlBatch = serde_json::from_value(json!({"Results": [
            {"type": "exec", "columns": [], "rows": [], "rows_affected": 1},
            {"type": "select", "columns": ["n"], "rows": [["x"]], "rows_affected": 0}
        ]}))
        .unwrap();
        assert_eq!(
            sql_results(&batch.results),
            "=> Query 0:\n\n\
             Rows affected: 1\n\
             \n\
             => Query 1:\n\n\
             +---+\n\
             | n |\n\
             +---+\n\
             | x |\n\
             +---+\n\
             \n"
        );
    }
}
