//! Extended XYZ trajectories, readable by ASE, OVITO and VMD.
//!
//! One frame per configuration:
//!
//! ```text
//! 4
//! Properties=species:S:1:pos:R:3 energy=-22.46 log_q=3.25
//! X 1.25 -0.5 0.0
//! X ...
//! ```
//!
//! The first line is the number of particles N, the second a comment line of `key=value` pairs:
//! `Properties` declares the per-atom columns (a species, then the position) and every other
//! pair is a per-frame property (energies, `log q`, `log w`, whatever the caller passes). All
//! particles are written as species `X` (ASE's dummy atom): eqflow's particles have no chemical
//! identity.
//!
//! **Species.** A system of several particle species ([`Species`]) gets one more per-atom column,
//! `species_index:I:1` (`Properties=species:S:1:pos:R:3:species_index:I:1`), the particle's
//! species index: ASE reads it as an integer array, OVITO can colour by it, and
//! [`read_xyz`] returns it ([`XyzTrajectory::species`]), so a file read back says which particle
//! is which instead of losing it. Files of identical particles have no such column.
//!
//! **Dimensions.** XYZ positions always have three components. Systems with D < 3 are written
//! with the missing components equal to 0 (a 2-D system lies in the z = 0 plane), and reading
//! with `dim < 3` requires them to be exactly 0, so a 3-D file cannot be read as 2-D by mistake.
//!
//! Numbers are written in Rust's shortest round-trip form, so an `f64` written and read back is
//! bit-identical.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use super::{format_error, in_file};
use crate::error::{Error, Result, check_finite};
use crate::geometry::{Layout, MAX_DIM};
use crate::species::Species;

/// Species written for every particle.
const SPECIES: &str = "X";
/// Column declaration written in every frame.
const PROPERTIES: &str = "species:S:1:pos:R:3";
/// The per-atom column of a particle's species index, written after the position for systems
/// of several species.
pub const SPECIES_INDEX: &str = "species_index";

/// Frames read from an XYZ file.
#[derive(Debug, Clone, PartialEq)]
pub struct XyzTrajectory {
    /// N (the atom count of the frames, all equal) and the `dim` the file was read with.
    pub layout: Layout,
    /// `n_frames · N·D` particle-major coordinates.
    pub x: Vec<f64>,
    /// The numeric per-frame properties of the comment lines, in the order of the first frame:
    /// `(name, one value per frame)`. Non-numeric values (such as `pbc="F F F"`) are ignored.
    pub properties: Vec<(String, Vec<f64>)>,
    /// The per-atom species indices of a `species_index:I:1` column (one per atom, the same in
    /// every frame), `None` when the file has no such column.
    pub species: Option<Vec<u32>>,
}

impl XyzTrajectory {
    /// Number of frames.
    #[must_use]
    pub fn n_frames(&self) -> usize {
        self.x.len() / self.layout.len()
    }

    /// The values of property `name`, one per frame, if the file has it.
    #[must_use]
    pub fn property(&self, name: &str) -> Option<&[f64]> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Writes `n = x.len() / (N·D)` configurations of `layout` as extended XYZ frames, each with
/// the per-frame `properties` given as `(name, n values)`, e.g. `[("energy", &u), ("log_q",
/// &log_q)]`. The particles are identical (no species column): [`write_xyz_with_species`]
/// writes a system of several species.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `x.len()` is not a multiple of N·D or a property does not have
/// one value per frame; [`Error::InvalidArgument`] for a property name that is not an identifier
/// (`[A-Za-z_][A-Za-z0-9_]*`), is `Properties`, or is repeated; [`Error::NonFinite`] for a NaN
/// or infinite coordinate or a NaN property (infinite properties such as `U = +∞` are written as
/// `inf`); [`Error::Io`] if the file cannot be written.
pub fn write_xyz(
    path: impl AsRef<Path>,
    x: &[f64],
    layout: Layout,
    properties: &[(&str, &[f64])],
) -> Result<()> {
    write_xyz_with_species(path, x, layout, None, properties)
}

/// As [`write_xyz`], with the particles' species: with several species every atom line gets its
/// species index in a `species_index:I:1` column (module docs); `None` or a single species
/// writes what [`write_xyz`] writes.
///
/// # Errors
///
/// As [`write_xyz`], and [`Error::DimensionMismatch`] if `species` does not have one index per
/// particle of `layout`.
pub fn write_xyz_with_species(
    path: impl AsRef<Path>,
    x: &[f64],
    layout: Layout,
    species: Option<&Species>,
    properties: &[(&str, &[f64])],
) -> Result<()> {
    let path = path.as_ref();
    let species = species_column(species, layout).map_err(|e| in_file(path, e))?;
    check_frames(x, layout, properties).map_err(|e| in_file(path, e))?;
    super::write_atomically(path, "XYZ file", |mut w| {
        write_unchecked(&mut w, x, layout, species, properties)
    })
}

/// As [`write_xyz`], to any writer.
pub fn write_xyz_to<W: Write>(
    mut writer: W,
    x: &[f64],
    layout: Layout,
    properties: &[(&str, &[f64])],
) -> Result<()> {
    check_frames(x, layout, properties)?;
    write_unchecked(&mut writer, x, layout, None, properties).map_err(|e| Error::Io {
        what: format!("cannot write XYZ frames: {e}"),
    })
}

/// Reads every frame of an (extended) XYZ file as configurations in `dim` dimensions; N is the
/// atom count of the frames. The species column (`species:S:1`) is ignored; a
/// `species_index:I:1` column, as [`write_xyz_with_species`] writes, is returned as
/// [`XyzTrajectory::species`].
///
/// Plain XYZ (a comment line without `Properties=`) is read as columns `species x y z` with no
/// properties; extended XYZ must declare a `pos:R:3` column, and its lines must have exactly the
/// declared columns.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if `dim` is not 1, 2 or 3 or the frames have fewer than two atoms;
/// [`Error::Io`] if the file cannot be opened or read; [`Error::Format`] for an empty file, a
/// bad atom count, a truncated frame, frames of different atom counts, a malformed comment or
/// atom line, non-zero components beyond `dim`, frames whose numeric properties differ, a
/// `species_index` that is not a non-negative integer or differs between frames, or a
/// periodic frame (a true `pbc`, or a `Lattice` without `pbc`: eqflow has no periodic systems);
/// [`Error::NonFinite`] for a NaN or infinite coordinate or a NaN property.
pub fn read_xyz(path: impl AsRef<Path>, dim: usize) -> Result<XyzTrajectory> {
    let path = path.as_ref();
    let file = super::open_regular(path, "XYZ file")?;
    read_xyz_from(BufReader::new(file), dim).map_err(|e| in_file(path, e))
}

/// As [`read_xyz`], from any buffered reader.
pub fn read_xyz_from<R: BufRead>(reader: R, dim: usize) -> Result<XyzTrajectory> {
    if dim == 0 || dim > MAX_DIM {
        return Err(Error::invalid(format!(
            "XYZ: dim must be between 1 and {MAX_DIM}, got {dim}"
        )));
    }
    let mut lines = Lines {
        inner: reader.lines(),
        number: 0,
    };
    let mut layout: Option<Layout> = None;
    let mut x = Vec::new();
    let mut properties: Vec<(String, Vec<f64>)> = Vec::new();
    // The first frame's species indices (if it has the column); later frames must agree.
    let mut species: Option<Vec<u32>> = None;
    let mut frame = 0usize;
    loop {
        // Blank lines between or after frames are tolerated; anything else starts a frame.
        let count_line = loop {
            match lines.next()? {
                None => break None,
                Some(l) if l.trim().is_empty() => {}
                Some(l) => break Some(l),
            }
        };
        let Some(count_line) = count_line else { break };
        let n_atoms: usize = count_line.trim().parse().map_err(|_| {
            lines.error(&format!(
                "expected the atom count of frame {frame}, found {:?}",
                clip(&count_line)
            ))
        })?;
        match layout {
            Some(l) if l.n_particles != n_atoms => {
                return Err(lines.error(&format!(
                    "frame {frame} has {n_atoms} atoms, the first frame {}",
                    l.n_particles
                )));
            }
            Some(_) => {}
            None => {
                layout =
                    Some(Layout::new(n_atoms, dim).map_err(|e| {
                        Error::invalid(format!("XYZ: frames of {n_atoms} atoms: {e}"))
                    })?);
            }
        }
        let comment = lines.expect_line(frame, "the comment line", n_atoms)?;
        let parsed = parse_comment(&comment).map_err(|what| lines.error(&what))?;
        if parsed.periodic {
            // Read as a cluster, a periodic frame's distances across the box would be wrong
            // without a word: eqflow's systems have no periodic boundaries. Plain XYZ too:
            // ASE writes and reads `Lattice` and `pbc` there without `Properties`.
            return Err(lines.error(&format!(
                "frame {frame} is periodic (pbc or Lattice in its comment line); eqflow's \
                 systems are clusters without periodic boundaries, so its distances would be \
                 wrong (write pbc=\"F F F\" if the cell is only a box around a cluster)"
            )));
        }
        // Without `Properties=` the comment is free text: `t=3` in it is no property.
        let (columns, values) = match &parsed.properties_spec {
            Some(spec) => (
                Some(columns_of(spec).map_err(|what| lines.error(&what))?),
                parsed.values,
            ),
            None => (None, Vec::new()),
        };
        if frame == 0 {
            properties = values
                .iter()
                .map(|(k, _)| (k.clone(), Vec::new()))
                .collect();
        }
        merge_properties(&mut properties, values, frame, lines.number)?;
        let species_at = columns.and_then(|c| c.species_at);
        if frame == 0 {
            species = species_at.map(|_| Vec::new());
        } else if species.is_some() != species_at.is_some() {
            return Err(lines.error(&format!(
                "frame {frame} {} {SPECIES_INDEX} column, the first frame {}",
                if species_at.is_some() {
                    "has a"
                } else {
                    "has no"
                },
                if species.is_some() {
                    "does"
                } else {
                    "does not"
                },
            )));
        }

        for atom in 0..n_atoms {
            let line = lines.expect_line(frame, &format!("atom {atom}"), n_atoms)?;
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let pos_at = match columns {
                Some(c) if tokens.len() == c.total => c.pos_at,
                Some(c) => {
                    return Err(lines.error(&format!(
                        "frame {frame}, atom {atom}: {} columns, Properties declares {}",
                        tokens.len(),
                        c.total
                    )));
                }
                None if tokens.len() >= 4 => 1,
                None => {
                    return Err(lines.error(&format!(
                        "frame {frame}, atom {atom}: expected 'species x y z', found {:?}",
                        clip(&line)
                    )));
                }
            };
            for (k, token) in tokens[pos_at..pos_at + 3].iter().enumerate() {
                let v: f64 = token.parse().map_err(|_| {
                    lines.error(&format!(
                        "frame {frame}, atom {atom}: coordinate {k} is not a number: {token:?}"
                    ))
                })?;
                if !v.is_finite() {
                    return Err(Error::non_finite(format!(
                        "line {}: frame {frame}, atom {atom}: coordinate {k} is {v}",
                        lines.number
                    )));
                }
                if k < dim {
                    x.push(v);
                } else if v != 0.0 {
                    return Err(lines.error(&format!(
                        "frame {frame}, atom {atom}: coordinate {k} is {token}, not 0, but the \
                         file is read as {dim}-D"
                    )));
                }
            }
            if let (Some(at), Some(indices)) = (species_at, species.as_mut()) {
                let token = tokens[at];
                let index: u32 = token.parse().map_err(|_| {
                    lines.error(&format!(
                        "frame {frame}, atom {atom}: {SPECIES_INDEX} {:?} is not a species \
                         index (an integer from 0 to {})",
                        clip(token),
                        u32::MAX
                    ))
                })?;
                if frame == 0 {
                    indices.push(index);
                } else if indices[atom] != index {
                    return Err(lines.error(&format!(
                        "frame {frame}, atom {atom}: {SPECIES_INDEX} {index}, but {} in the \
                         first frame (a particle keeps its species)",
                        indices[atom]
                    )));
                }
            }
        }
        frame += 1;
    }
    let layout = layout.ok_or_else(|| format_error("no frames (empty XYZ file)"))?;
    Ok(XyzTrajectory {
        layout,
        x,
        properties,
        species,
    })
}

/// The species indices to write as a column: `None` for identical particles (no column).
fn species_column(species: Option<&Species>, layout: Layout) -> Result<Option<&[u32]>> {
    match species {
        Some(s) if !s.is_single() => {
            s.check_count(layout.n_particles)?;
            Ok(Some(s.of_particle()))
        }
        _ => Ok(None),
    }
}

fn check_frames(x: &[f64], layout: Layout, properties: &[(&str, &[f64])]) -> Result<()> {
    let len = layout.len();
    if !x.len().is_multiple_of(len) {
        return Err(Error::size(
            format!("XYZ configurations: a multiple of N·D = {len} values"),
            x.len() / len * len,
            x.len(),
        ));
    }
    check_finite(x, "XYZ configurations")?;
    let n = x.len() / len;
    for (i, (name, values)) in properties.iter().enumerate() {
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier || *name == "Properties" {
            return Err(Error::invalid(format!(
                "XYZ property name {name:?}: must match [A-Za-z_][A-Za-z0-9_]* and not be \
                 'Properties'"
            )));
        }
        if properties[..i].iter().any(|(other, _)| other == name) {
            return Err(Error::invalid(format!(
                "XYZ property name {name:?} given twice"
            )));
        }
        if values.len() != n {
            return Err(Error::size(
                format!("XYZ property {name:?}: one value per frame"),
                n,
                values.len(),
            ));
        }
        if let Some(f) = values.iter().position(|v| v.is_nan()) {
            return Err(Error::non_finite(format!(
                "XYZ property {name:?} of frame {f} is NaN"
            )));
        }
    }
    Ok(())
}

fn write_unchecked<W: Write>(
    writer: &mut W,
    x: &[f64],
    layout: Layout,
    species: Option<&[u32]>,
    properties: &[(&str, &[f64])],
) -> std::io::Result<()> {
    for (f, frame) in x.chunks_exact(layout.len()).enumerate() {
        writeln!(writer, "{}", layout.n_particles)?;
        write!(writer, "Properties={PROPERTIES}")?;
        if species.is_some() {
            write!(writer, ":{SPECIES_INDEX}:I:1")?;
        }
        for (name, values) in properties {
            // `{:?}` is the shortest representation that parses back to the same f64.
            write!(writer, " {name}={:?}", values[f])?;
        }
        writeln!(writer)?;
        for (i, particle) in frame.chunks_exact(layout.dim).enumerate() {
            write!(writer, "{SPECIES}")?;
            for k in 0..3 {
                write!(writer, " {:?}", particle.get(k).copied().unwrap_or(0.0))?;
            }
            if let Some(indices) = species {
                write!(writer, " {}", indices[i])?;
            }
            writeln!(writer)?;
        }
    }
    Ok(())
}

/// Line reader that counts lines for error messages.
struct Lines<B> {
    inner: std::io::Lines<B>,
    number: usize,
}

impl<B: BufRead> Lines<B> {
    fn next(&mut self) -> Result<Option<String>> {
        match self.inner.next() {
            None => Ok(None),
            Some(Ok(mut line)) => {
                self.number += 1;
                if line.ends_with('\r') {
                    line.pop();
                }
                // A byte-order mark before the first atom count (Windows editors write one).
                if self.number == 1
                    && let Some(rest) = line.strip_prefix('\u{feff}')
                {
                    line = rest.to_owned();
                }
                Ok(Some(line))
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(format_error(
                format!("line {} is not valid UTF-8 text", self.number + 1),
            )),
            Some(Err(e)) => Err(Error::Io {
                what: format!("read failed after line {}: {e}", self.number),
            }),
        }
    }

    fn expect_line(&mut self, frame: usize, what: &str, n_atoms: usize) -> Result<String> {
        self.next()?.ok_or_else(|| {
            format_error(format!(
                "truncated: the file ends before {what} of frame {frame} (which declares \
                 {n_atoms} atoms)"
            ))
        })
    }

    fn error(&self, what: &str) -> Error {
        format_error(format!("line {}: {what}", self.number))
    }
}

/// A line shortened for an error message.
fn clip(line: &str) -> String {
    line.chars().take(80).collect()
}

struct Comment {
    properties_spec: Option<String>,
    /// Numeric `key=value` pairs, in order.
    values: Vec<(String, f64)>,
    /// Whether the frame declares periodic boundaries: a `pbc` with a true component, or a
    /// `Lattice` without `pbc` (extended XYZ's default is then periodic).
    periodic: bool,
}

/// Splits a comment line into `key=value` pairs (values may be double-quoted and contain
/// spaces; bare words without `=` are flags and ignored).
fn parse_comment(line: &str) -> std::result::Result<Comment, String> {
    let mut comment = Comment {
        properties_spec: None,
        values: Vec::new(),
        periodic: false,
    };
    let (mut lattice, mut pbc) = (false, None::<bool>);
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = &rest[key_end..];
        let value = if let Some(after) = rest.strip_prefix('=') {
            if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted
                    .find('"')
                    .ok_or_else(|| format!("unterminated quoted value of {key:?}"))?;
                rest = &quoted[end + 1..];
                Some(&quoted[..end])
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                rest = &after[end..];
                Some(&after[..end])
            }
        } else {
            None
        };
        rest = rest.trim_start();
        let Some(value) = value else { continue };
        if key.is_empty() {
            return Err("'=' without a key in the comment line".to_string());
        }
        if key == "Properties" {
            comment.properties_spec = Some(value.to_string());
        } else if key == "Lattice" {
            lattice = true;
        } else if key == "pbc" {
            pbc = Some(
                value
                    .split_whitespace()
                    .any(|flag| ["t", "true", "1"].contains(&flag.to_ascii_lowercase().as_str())),
            );
        } else if let Ok(v) = value.parse::<f64>() {
            if comment.values.iter().any(|(k, _)| k == key) {
                return Err(format!("property {key:?} appears twice"));
            }
            comment.values.push((key.to_string(), v));
        }
    }
    comment.periodic = pbc.unwrap_or(lattice);
    Ok(comment)
}

/// Where an atom line's columns are, from its `Properties` declaration.
#[derive(Clone, Copy)]
struct Columns {
    /// The column of the first position component.
    pos_at: usize,
    /// The column of the `species_index:I:1` property, if declared.
    species_at: Option<usize>,
    /// The number of columns.
    total: usize,
}

/// The columns of a `Properties` value such as `species:S:1:pos:R:3:forces:R:3`.
fn columns_of(spec: &str) -> std::result::Result<Columns, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    if !parts.len().is_multiple_of(3) {
        return Err(format!(
            "Properties={spec:?} is not a list of name:type:count triples"
        ));
    }
    let mut total = 0usize;
    let (mut pos_at, mut species_at) = (None, None);
    for (k, triple) in parts.chunks_exact(3).enumerate() {
        // A name declared twice would leave which column is meant to the reader: refused.
        if parts
            .chunks_exact(3)
            .take(k)
            .any(|earlier| earlier[0] == triple[0])
        {
            return Err(format!(
                "Properties={spec:?} declares the column {:?} twice",
                triple[0]
            ));
        }
        let count: usize = triple[2]
            .parse()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| format!("Properties={spec:?}: bad column count {:?}", triple[2]))?;
        if triple[0] == "pos" {
            if triple[1] != "R" || count != 3 {
                return Err(format!("Properties={spec:?}: pos must be R:3"));
            }
            pos_at = Some(total);
        }
        if triple[0] == SPECIES_INDEX {
            if triple[1] != "I" || count != 1 {
                return Err(format!("Properties={spec:?}: {SPECIES_INDEX} must be I:1"));
            }
            species_at = Some(total);
        }
        total = total
            .checked_add(count)
            .ok_or_else(|| format!("Properties={spec:?}: too many columns"))?;
    }
    let pos_at = pos_at.ok_or_else(|| format!("Properties={spec:?} declares no pos column"))?;
    Ok(Columns {
        pos_at,
        species_at,
        total,
    })
}

/// Appends the numeric properties of `frame` (comment on line `line`) to `properties`, which
/// lists the first frame's.
fn merge_properties(
    properties: &mut [(String, Vec<f64>)],
    values: Vec<(String, f64)>,
    frame: usize,
    line: usize,
) -> Result<()> {
    let differ = |found: Vec<&String>, p: &[(String, Vec<f64>)]| {
        let first: Vec<&String> = p.iter().map(|(k, _)| k).collect();
        format_error(format!(
            "line {line}: frame {frame} has properties {found:?}, the first frame {first:?}"
        ))
    };
    if values.len() != properties.len() {
        return Err(differ(values.iter().map(|(k, _)| k).collect(), properties));
    }
    let mut by_name: HashMap<&str, f64> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for i in 0..properties.len() {
        let Some(v) = by_name.remove(properties[i].0.as_str()) else {
            return Err(differ(values.iter().map(|(k, _)| k).collect(), properties));
        };
        if v.is_nan() {
            return Err(Error::non_finite(format!(
                "line {line}: property {:?} of frame {frame} is NaN",
                properties[i].0
            )));
        }
        properties[i].1.push(v);
    }
    Ok(())
}
