//! Column formatting as the Docker CLI does it with Go's `tabwriter` (minimum cell width
//! 10, padding 3, blanks): every column but the last is padded to the widest cell plus
//! three spaces (at least 10 characters); the last column is written as is.

const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// A table: a header row and data rows of the same number of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The rendered table, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for row in &self.rows {
            // The last cell of a row is not part of a column.
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let widths: Vec<usize> = widths
            .into_iter()
            .map(|w| (w + PADDING).max(MIN_WIDTH))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i < last {
                    let pad = widths[i] - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_by_three_with_min_width_ten() {
        let mut t = Table::new(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
        t.row([
            "abcdefghijkl",
            "web",
            "replicated",
            "2/2",
            "nginx:latest",
            "*:30000->80/tcp",
        ]);
        t.row([
            "mnopqrstuvwx",
            "a-long-service-name",
            "global",
            "3/3",
            "redis",
            "",
        ]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID             NAME                  MODE         REPLICAS   IMAGE          PORTS"
        );
        assert_eq!(
            lines[1],
            "abcdefghijkl   web                   replicated   2/2        nginx:latest   *:30000->80/tcp"
        );
        // An empty last cell leaves the padding of the previous column.
        assert_eq!(
            lines[2],
            "mnopqrstuvwx   a-long-service-name   global       3/3        redis          "
        );
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut t = Table::new(["ERROR", "X"]);
        t.row(["\"abcdefgh…\"", "y"]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        // 11 characters + 3 padding
        assert_eq!(lines[0], "ERROR         X");
        assert_eq!(lines[1], "\"abcdefgh…\"   y");
    }

    #[test]
    fn header_only_table() {
        let t = Table::new(["ID", "HOSTNAME"]);
        assert_eq!(t.render(), "ID        HOSTNAME\n");
    }
}
