//! SentencePiece `tokenizer.model` files (Llama-2, Vicuna, …), read and applied in
//! pure Rust.
//!
//! Only what encoding with a BPE model needs is implemented, and it follows the C++
//! library (sentencepiece 0.2.x) step by step so that the ids are the same:
//! `Normalizer::Normalize` (normalizer.cc) without a precompiled character map, then
//! `bpe::Model::SampleEncode` with no dropout (bpe_model.cc), then the id assignment of
//! `SentencePieceProcessor::PopulateSentencePieceText` (byte fallback, merged runs of
//! unknown pieces). The protobuf is parsed with hand-declared `prost` messages holding
//! the subset of sentencepiece_model.proto that this needs; unknown fields are skipped.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;

/// The protobuf messages of sentencepiece_model.proto, as far as they are read here.
///
/// Every field is proto2 `optional`, so it is an `Option` and the proto's default is
/// applied where it is read (the defaults differ from Rust's: `model_type` defaults to
/// UNIGRAM, the normalizer flags to true).
mod proto {
    /// `ModelProto.SentencePiece.Type`.
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;

    /// `TrainerSpec.ModelType`.
    pub const UNIGRAM: i32 = 1;
    pub const BPE: i32 = 2;
    pub const WORD: i32 = 3;
    pub const CHAR: i32 = 4;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// An enum on the wire; kept as its number so that an unknown value is not
        /// silently mapped to a default.
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(int32, optional, tag = "4")]
        pub vocab_size: Option<i32>,
        #[prost(bool, optional, tag = "24")]
        pub treat_whitespace_as_suffix: Option<bool>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
        #[prost(int32, optional, tag = "40")]
        pub unk_id: Option<i32>,
        #[prost(int32, optional, tag = "41")]
        pub bos_id: Option<i32>,
        #[prost(int32, optional, tag = "42")]
        pub eos_id: Option<i32>,
        #[prost(int32, optional, tag = "43")]
        pub pad_id: Option<i32>,
        #[prost(string, optional, tag = "44")]
        pub unk_surface: Option<String>,
        #[prost(string, optional, tag = "45")]
        pub unk_piece: Option<String>,
        #[prost(string, optional, tag = "46")]
        pub bos_piece: Option<String>,
        #[prost(string, optional, tag = "47")]
        pub eos_piece: Option<String>,
        #[prost(string, optional, tag = "48")]
        pub pad_piece: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5")]
        pub escape_whitespaces: Option<bool>,
    }
}

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible stand-in for a space.
const SPACE_SYMBOL: &str = "\u{2581}";

/// What a piece is for; mirrors `ModelProto.SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Clone, Debug)]
struct Piece {
    text: String,
    score: f32,
    kind: Kind,
}

/// Longest-prefix matcher over the user-defined symbols (the C++ uses a Darts trie;
/// a handful of hash probes per position is as good for the few symbols models have).
#[derive(Clone, Debug, Default)]
struct PrefixMatcher {
    symbols: HashSet<String>,
    /// Distinct symbol lengths in bytes, longest first, so the first hit is the longest.
    lengths: Vec<usize>,
    /// Cheap rejection: most positions start with a byte no symbol starts with.
    first_byte: Vec<bool>,
}

impl PrefixMatcher {
    fn new(symbols: HashSet<String>) -> Self {
        let mut lengths: Vec<usize> = symbols.iter().map(String::len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        let mut first_byte = vec![false; 256];
        for s in &symbols {
            first_byte[s.as_bytes()[0] as usize] = true;
        }
        Self {
            symbols,
            lengths,
            first_byte,
        }
    }

    /// Byte length of the longest symbol that `s` starts with.
    fn longest_prefix(&self, s: &str) -> Option<usize> {
        if self.symbols.is_empty() || !self.first_byte[s.as_bytes()[0] as usize] {
            return None;
        }
        // A symbol is valid UTF-8, so a match of valid UTF-8 ends on a char boundary;
        // the boundary test only keeps the slice from panicking on the other lengths.
        self.lengths
            .iter()
            .copied()
            .find(|&l| l <= s.len() && s.is_char_boundary(l) && self.symbols.contains(&s[..l]))
    }
}

/// A SentencePiece BPE model read from its protobuf file (`tokenizer.model`).
///
/// [`SentencePiece::encode`] gives the ids that the C++ library's `encode(text)` gives.
/// Unigram, word and char models are rejected when loading, as are models with a
/// precompiled normalization map (e.g. `nmt_nfkc`): Llama-family models use neither.
#[derive(Clone, Debug)]
pub struct SentencePiece {
    /// Boxed because the tables are large and `TextTokenizer` holds this in an enum.
    vocab: Box<Vocab>,
    /// Longest piece in `vocab.normal`, in bytes: longer pairs need no lookup.
    max_normal_len: usize,
    /// Whether the text may be cut where no merge can cross (no UNUSED pieces).
    segmentable: bool,
    unk_id: u32,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
}

/// The pieces of a [`SentencePiece`] and the lookups built from them.
#[derive(Clone, Debug)]
struct Vocab {
    pieces: Vec<Piece>,
    /// NORMAL, USER_DEFINED and UNUSED pieces: the only ones merges may form.
    normal: HashMap<String, u32>,
    /// CONTROL, UNKNOWN and BYTE pieces, which text never merges into.
    reserved: HashMap<String, u32>,
    /// Every pair of adjacent characters inside a piece of `normal` (see [`bigram`]):
    /// no merge can join two characters whose pair is missing here.
    bigrams: HashSet<u64>,
    user_defined: PrefixMatcher,
    /// Ids of `<0x00>`…`<0xFF>` when byte fallback is on.
    byte_ids: Option<Vec<u32>>,
    bos_piece: String,
    eos_piece: String,
    pad_piece: String,
    unk_surface: String,
    /// The serialized `ModelProto` this was built from, kept whole so that
    /// [`SentencePiece::to_bytes`] writes back every field, including the ones the
    /// encoder never reads (trainer settings that other tools may look at).
    proto: Vec<u8>,
}

/// A SentencePiece BPE vocabulary given as arrays rather than a `tokenizer.model`
/// file, as GGUF files store it; see [`SentencePiece::from_vocab`].
#[derive(Clone, Debug, Default)]
pub struct VocabSpec {
    /// `(piece, score, type)` in id order. The type is numbered as
    /// `ModelProto.SentencePiece.Type` (and GGUF's `tokenizer.ggml.token_type`):
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub pieces: Vec<(String, f32, i32)>,
    /// Beginning-of-sentence id, if the model has one.
    pub bos_id: Option<u32>,
    /// End-of-sentence id, if the model has one.
    pub eos_id: Option<u32>,
    /// Padding id, if the model has one.
    pub pad_id: Option<u32>,
    /// `NormalizerSpec.add_dummy_prefix`: a `▁` is put before the text.
    pub add_dummy_prefix: bool,
    /// `NormalizerSpec.remove_extra_whitespaces`: leading, trailing and repeated
    /// spaces are dropped (Llama's own model has this off).
    pub remove_extra_whitespaces: bool,
}

impl SentencePiece {
    /// Reads a `tokenizer.model` file.
    ///
    /// Fails, naming the file, when it cannot be read, is not a SentencePiece model
    /// protobuf, is not a BPE model (unigram models are not supported), or is
    /// inconsistent in the ways the C++ library rejects (no `<unk>`, duplicate pieces,
    /// byte fallback without the 256 byte pieces, …).
    pub fn from_file(path: &Path) -> Result<Self> {
        // One message with both the file and the reason, so that plain `{}` shows both.
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow!("cannot read SentencePiece model {}: {e}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    /// Builds the model from the bytes of a `tokenizer.model` file (a serialized
    /// `ModelProto`); [`SentencePiece::from_file`] adds the file name to the errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_proto_bytes(bytes.to_vec())
    }

    /// Builds a BPE model from a bare vocabulary (GGUF's `tokenizer.ggml.*` arrays).
    ///
    /// The `ModelProto` such a `tokenizer.model` would hold is assembled and then read
    /// as [`SentencePiece::from_bytes`] reads a file, so the same checks apply and
    /// [`SentencePiece::to_bytes`] gives a file the SentencePiece library can load.
    /// Byte fallback is on exactly when there are byte pieces, as sentencepiece's
    /// trainer writes it; whitespace is escaped to `▁` and no character map is used
    /// (identity normalization), as in Llama's models.
    pub fn from_vocab(spec: VocabSpec) -> Result<Self> {
        let piece_at = |id: Option<u32>, what: &str| -> Result<Option<String>> {
            id.map(|id| {
                spec.pieces
                    .get(id as usize)
                    .map(|p| p.0.clone())
                    .with_context(|| {
                        format!(
                            "{what} id {id} is outside the vocabulary ({} pieces)",
                            spec.pieces.len()
                        )
                    })
            })
            .transpose()
        };
        let as_proto_id = |id: Option<u32>| -> Result<i32> {
            // -1 is the proto's "no such piece".
            id.map_or(Ok(-1), |id| i32::try_from(id).context("id too large"))
        };
        let unk_id = spec
            .pieces
            .iter()
            .position(|p| p.2 == proto::UNKNOWN)
            .map(|i| i as u32);
        let trainer = proto::TrainerSpec {
            model_type: Some(proto::BPE),
            vocab_size: Some(i32::try_from(spec.pieces.len()).context("too many pieces")?),
            treat_whitespace_as_suffix: Some(false),
            byte_fallback: Some(spec.pieces.iter().any(|p| p.2 == proto::BYTE)),
            unk_id: Some(as_proto_id(unk_id)?),
            bos_id: Some(as_proto_id(spec.bos_id)?),
            eos_id: Some(as_proto_id(spec.eos_id)?),
            pad_id: Some(as_proto_id(spec.pad_id)?),
            unk_surface: None,
            unk_piece: piece_at(unk_id, "unknown")?,
            bos_piece: piece_at(spec.bos_id, "bos")?,
            eos_piece: piece_at(spec.eos_id, "eos")?,
            pad_piece: piece_at(spec.pad_id, "pad")?,
        };
        let model = proto::ModelProto {
            pieces: spec
                .pieces
                .into_iter()
                .map(|(piece, score, kind)| proto::SentencePiece {
                    piece: Some(piece),
                    score: Some(score),
                    r#type: Some(kind),
                })
                .collect(),
            trainer_spec: Some(trainer),
            normalizer_spec: Some(proto::NormalizerSpec {
                name: Some("identity".into()),
                precompiled_charsmap: None,
                add_dummy_prefix: Some(spec.add_dummy_prefix),
                remove_extra_whitespaces: Some(spec.remove_extra_whitespaces),
                escape_whitespaces: Some(true),
            }),
        };
        Self::from_proto_bytes(model.encode_to_vec())
    }

    /// The serialized `ModelProto`: the contents of a `tokenizer.model` file that
    /// loads as this model (the bytes it was read from, or the proto
    /// [`SentencePiece::from_vocab`] built).
    pub fn to_bytes(&self) -> &[u8] {
        &self.vocab.proto
    }

    fn from_proto_bytes(bytes: Vec<u8>) -> Result<Self> {
        let model = proto::ModelProto::decode(bytes.as_slice())
            .context("not a SentencePiece model: the protobuf does not parse")?;
        if model.pieces.is_empty() {
            bail!("not a SentencePiece model: it has no pieces");
        }
        let trainer = model.trainer_spec.unwrap_or_default();
        match trainer.model_type.unwrap_or(proto::UNIGRAM) {
            proto::BPE => {}
            proto::UNIGRAM => {
                bail!("this is a unigram SentencePiece model; only BPE models are supported")
            }
            proto::WORD => bail!("this is a word SentencePiece model; only BPE is supported"),
            proto::CHAR => bail!("this is a char SentencePiece model; only BPE is supported"),
            other => bail!("unknown SentencePiece model type {other}; only BPE is supported"),
        }
        let norm = model.normalizer_spec.unwrap_or_default();
        if norm
            .precompiled_charsmap
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            bail!(
                "normalization rule {:?} needs a precompiled character map, which is not \
                 supported (only identity normalization, as Llama models use)",
                norm.name.as_deref().unwrap_or("")
            );
        }
        let byte_fallback = trainer.byte_fallback.unwrap_or(false);

        let mut pieces = Vec::with_capacity(model.pieces.len());
        let mut normal = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined = HashSet::new();
        let mut unk_id = None;
        let mut max_normal_len = 0;
        let mut bytes_found = vec![false; 256];
        for (i, p) in model.pieces.into_iter().enumerate() {
            let id = u32::try_from(i).context("too many pieces")?;
            let text = p.piece.unwrap_or_default();
            let kind = match p.r#type.unwrap_or(proto::NORMAL) {
                proto::NORMAL => Kind::Normal,
                proto::UNKNOWN => Kind::Unknown,
                proto::CONTROL => Kind::Control,
                proto::USER_DEFINED => Kind::UserDefined,
                proto::UNUSED => Kind::Unused,
                proto::BYTE => Kind::Byte,
                other => bail!("piece {id} ({text:?}) has an unknown type {other}"),
            };
            if text.is_empty() {
                bail!("piece {id} is empty");
            }
            if text.contains('\0') {
                bail!("piece {id} contains a NUL character");
            }
            // Same split as ModelInterface::InitializePieces: a string may appear once in
            // each map, and only `normal` takes part in merging.
            let map = match kind {
                Kind::Normal | Kind::UserDefined | Kind::Unused => {
                    max_normal_len = max_normal_len.max(text.len());
                    &mut normal
                }
                Kind::Unknown | Kind::Control | Kind::Byte => &mut reserved,
            };
            if map.insert(text.clone(), id).is_some() {
                bail!("piece {text:?} is defined twice");
            }
            match kind {
                Kind::UserDefined => {
                    user_defined.insert(text.clone());
                }
                Kind::Unknown => {
                    if unk_id.is_some() {
                        bail!("more than one unknown piece");
                    }
                    unk_id = Some(id);
                }
                Kind::Byte => {
                    if !byte_fallback {
                        bail!("byte piece {text:?} although byte_fallback is false");
                    }
                    let b = piece_to_byte(&text)
                        .with_context(|| format!("invalid byte piece {text:?}"))?;
                    bytes_found[b as usize] = true;
                }
                _ => {}
            }
            pieces.push(Piece {
                text,
                score: p.score.unwrap_or(0.0),
                kind,
            });
        }
        let unk_id = unk_id.context("no unknown piece (<unk>) is defined")?;
        let mut bigrams = HashSet::new();
        for text in normal.keys() {
            let mut chars = text.chars();
            let mut prev = chars.next();
            for c in chars {
                bigrams.extend(prev.map(|p| bigram(p, c)));
                prev = Some(c);
            }
        }
        let segmentable = !pieces.iter().any(|p: &Piece| p.kind == Kind::Unused);
        let vocab = Vocab {
            pieces,
            normal,
            reserved,
            bigrams,
            user_defined: PrefixMatcher::new(user_defined),
            byte_ids: None,
            bos_piece: trainer.bos_piece.unwrap_or_else(|| "<s>".into()),
            eos_piece: trainer.eos_piece.unwrap_or_else(|| "</s>".into()),
            pad_piece: trainer.pad_piece.unwrap_or_else(|| "<pad>".into()),
            unk_surface: trainer.unk_surface.unwrap_or_else(|| " \u{2047} ".into()),
            proto: bytes,
        };
        let mut sp = Self {
            vocab: Box::new(vocab),
            max_normal_len,
            segmentable,
            unk_id,
            add_dummy_prefix: norm.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: norm.remove_extra_whitespaces.unwrap_or(true),
            escape_whitespaces: norm.escape_whitespaces.unwrap_or(true),
            treat_whitespace_as_suffix: trainer.treat_whitespace_as_suffix.unwrap_or(false),
        };
        if byte_fallback {
            if bytes_found.contains(&false) {
                bail!("byte_fallback is true but the 256 byte pieces are not all there");
            }
            let ids = (0..=255u8)
                .map(|b| sp.lookup(&format!("<0x{b:02X}>")))
                .collect();
            sp.vocab.byte_ids = Some(ids);
        }
        Ok(sp)
    }

    /// Ids as SentencePiece's `encode(text)` gives them (no BOS/EOS).
    ///
    /// BPE in SentencePiece does not split into words first; this runs in O(n log n)
    /// over the whole text, so long documents can be encoded in one call.
    ///
    /// # Panics
    ///
    /// If the text, with spaces escaped, is 4 GiB or longer.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self.normalize(text);
        self.encode_normalized(&normalized)
    }

    /// Number of pieces.
    pub fn vocab_size(&self) -> usize {
        self.vocab.pieces.len()
    }

    /// Id of the unknown piece (`<unk>`).
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Id of the beginning-of-sentence piece (`<s>` unless the model renames it), or
    /// `None` when the model has no such control piece.
    pub fn bos_id(&self) -> Option<u32> {
        self.control_id(&self.vocab.bos_piece)
    }

    /// Id of the end-of-sentence piece (`</s>` unless the model renames it), or
    /// `None` when the model has no such control piece.
    pub fn eos_id(&self) -> Option<u32> {
        self.control_id(&self.vocab.eos_piece)
    }

    /// Id of the padding piece (`<pad>` unless renamed), or `None` (Llama has none).
    pub fn pad_id(&self) -> Option<u32> {
        self.control_id(&self.vocab.pad_piece)
    }

    /// The piece string of `id` (with `▁` for spaces), or `None` when out of range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.vocab.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    /// The score of piece `id` (higher merges first), or `None` when out of range.
    pub fn piece_score(&self, id: u32) -> Option<f32> {
        self.vocab.pieces.get(id as usize).map(|p| p.score)
    }

    /// The type of piece `id`, numbered as `ModelProto.SentencePiece.Type` (1 normal,
    /// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), or `None` when out of
    /// range.
    pub fn piece_type(&self, id: u32) -> Option<i32> {
        self.vocab.pieces.get(id as usize).map(|p| match p.kind {
            Kind::Normal => proto::NORMAL,
            Kind::Unknown => proto::UNKNOWN,
            Kind::Control => proto::CONTROL,
            Kind::UserDefined => proto::USER_DEFINED,
            Kind::Unused => proto::UNUSED,
            Kind::Byte => proto::BYTE,
        })
    }

    /// The id of an exact piece string, or `None` when it is not in the vocabulary
    /// (the C++ `PieceToId` returns the unknown id instead).
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.vocab
            .reserved
            .get(piece)
            .or_else(|| self.vocab.normal.get(piece))
            .copied()
    }

    /// Text of `ids` as SentencePiece's `decode` gives it: control pieces vanish,
    /// `<unk>` becomes ` ⁇ `, runs of byte pieces are read as UTF-8 (each invalid byte
    /// becomes U+FFFD), `▁` becomes a space, and the dummy-prefix space of the first
    /// piece is dropped. Fails on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut text = String::new();
        let mut bytes = Vec::new();
        // The C++ only strips the leading `▁` of the first visible piece.
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for &id in ids {
            let piece = self.vocab.pieces.get(id as usize).with_context(|| {
                format!(
                    "invalid id {id} (vocabulary size {})",
                    self.vocab.pieces.len()
                )
            })?;
            if piece.kind == Kind::Byte {
                bytes.push(piece_to_byte(&piece.text).unwrap_or(0));
                continue;
            }
            push_utf8_lossy_per_byte(&mut text, &bytes);
            bytes.clear();
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match piece.kind {
                Kind::Control => {}
                Kind::Unknown => text.push_str(&self.vocab.unk_surface),
                _ => {
                    let mut s = piece.text.as_str();
                    if is_bos_ws && (self.add_dummy_prefix || self.remove_extra_whitespaces) {
                        if let Some(rest) = s.strip_prefix(SPACE_SYMBOL) {
                            s = rest;
                            bos_ws_seen = !self.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&s.replace(SPACE_SYMBOL, " "));
                }
            }
        }
        push_utf8_lossy_per_byte(&mut text, &bytes);
        Ok(text)
    }

    /// `PieceToId`: reserved pieces first, then normal ones, else the unknown id.
    fn lookup(&self, piece: &str) -> u32 {
        self.piece_to_id(piece).unwrap_or(self.unk_id)
    }

    fn control_id(&self, piece: &str) -> Option<u32> {
        self.vocab
            .reserved
            .get(piece)
            .copied()
            .filter(|&id| self.vocab.pieces[id as usize].kind == Kind::Control)
    }

    /// `Normalizer::Normalize` with an empty character map: only whitespace handling;
    /// user-defined symbols are copied as units. Only U+0020 counts as whitespace, as
    /// in the C++ (tabs and newlines are ordinary characters).
    fn normalize(&self, input: &str) -> String {
        let mut input = input;
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (piece, consumed) = self.normalize_prefix(input);
                if piece != " " {
                    break;
                }
                input = &input[consumed..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let space = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        let mut out = String::with_capacity(input.len() * 3 / 2 + 3);
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.push_str(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut piece, consumed) = self.normalize_prefix(input);
            if is_prev_space {
                piece = piece.trim_start_matches(' ');
            }
            if !piece.is_empty() {
                for c in piece.chars() {
                    if c == ' ' {
                        out.push_str(space);
                    } else {
                        out.push(c);
                    }
                }
                is_prev_space = piece.ends_with(' ');
            }
            input = &input[consumed..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.push_str(space);
        }
        out
    }

    /// `Normalizer::NormalizePrefix` without a character map: the longest user-defined
    /// symbol at the start of `input`, else its first character.
    fn normalize_prefix<'a>(&self, input: &'a str) -> (&'a str, usize) {
        let n = self
            .vocab
            .user_defined
            .longest_prefix(input)
            .unwrap_or_else(|| utf8_len(input.as_bytes()[0]));
        (&input[..n], n)
    }

    /// `bpe::Model::Encode` followed by the id assignment of
    /// `PopulateSentencePieceText`.
    ///
    /// The C++ runs one priority queue over the whole text. Where no merge can ever
    /// cross a boundary, the two sides evolve independently and in the same relative
    /// order, so the text is cut there and each segment gets a small queue: the same
    /// ids, several times faster on long texts. No cuts are made when the model has
    /// UNUSED pieces, whose resegmentation depends on the global order of proposals.
    fn encode_normalized(&self, normalized: &str) -> Vec<u32> {
        assert!(
            normalized.len() < NONE as usize,
            "SentencePiece::encode: text of 4 GiB or more"
        );
        let mut bpe = Bpe::new(self, normalized);
        let mut out = IdWriter {
            model: self,
            ids: Vec::with_capacity(normalized.len() / 3),
            prev_unknown: false,
        };
        let mut pos = 0;
        // Last character of the previous symbol, or `None` if that symbol is frozen.
        let mut prev_char = None;
        while pos < normalized.len() {
            let rest = &normalized[pos..];
            let (len, freeze, c) = match self.vocab.user_defined.longest_prefix(rest) {
                Some(l) => (l, true, None),
                None => {
                    let c = rest.chars().next().unwrap_or_default();
                    (c.len_utf8(), false, Some(c))
                }
            };
            if self.segmentable && !bpe.symbols.is_empty() {
                let joinable = match (prev_char, c) {
                    (Some(a), Some(b)) => self.vocab.bigrams.contains(&bigram(a, b)),
                    _ => false,
                };
                if !joinable {
                    bpe.finish(&mut out);
                }
            }
            bpe.push(pos, len, freeze);
            prev_char = c;
            pos += len;
        }
        bpe.finish(&mut out);
        out.ids
    }
}

/// Key of the character pair `a` `b` in [`Vocab::bigrams`].
fn bigram(a: char, b: char) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// Turns final pieces into ids as `PopulateSentencePieceText` does.
struct IdWriter<'a> {
    model: &'a SentencePiece,
    ids: Vec<u32>,
    prev_unknown: bool,
}

impl IdWriter<'_> {
    fn push(&mut self, w: &str) {
        let model = self.model;
        let id = model.lookup(w);
        let unknown = model.vocab.pieces[id as usize].kind == Kind::Unknown;
        match (&model.vocab.byte_ids, unknown) {
            (Some(byte_ids), true) => self.ids.extend(w.bytes().map(|b| byte_ids[b as usize])),
            // Without byte fallback a run of unknown pieces becomes one `<unk>`.
            (None, true) if self.prev_unknown => {}
            _ => self.ids.push(id),
        }
        self.prev_unknown = unknown;
    }
}

/// "No symbol" in [`Symbol::prev`] / [`Symbol::next`]; compact indices keep the queue
/// entries at 16 bytes.
const NONE: u32 = u32::MAX;

/// One symbol of the BPE working sequence: a byte range of the normalized text and
/// its neighbours in the linked list of live symbols. A symbol merged into its left
/// neighbour keeps `len == 0`.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    /// User-defined symbols are never merged with anything.
    freeze: bool,
}

/// A candidate merge of symbols `left` and `right` into a piece of `len` bytes.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    score: f32,
    left: u32,
    right: u32,
    len: u32,
}

impl Ord for Candidate {
    /// Max-heap order of bpe_model.cc's comparator: higher score first, then the
    /// leftmost pair. `partial_cmp` keeps its float semantics (0.0 == -0.0).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// `bpe::Model::SampleEncode` with alpha = 0, run segment by segment: symbols are
/// pushed, then [`Bpe::finish`] merges them, writes their ids and clears the buffers.
struct Bpe<'a> {
    model: &'a SentencePiece,
    text: &'a str,
    symbols: Vec<Symbol>,
    agenda: BinaryHeap<Candidate>,
    /// UNUSED piece id -> byte length of the left half of the last pair that could form
    /// it, to split it again at the end. Like the C++ `rev_merge`, the last pair
    /// *proposed* wins, whether or not it was the one merged.
    rev_merge: HashMap<u32, u32>,
}

impl<'a> Bpe<'a> {
    fn new(model: &'a SentencePiece, text: &'a str) -> Self {
        Self {
            model,
            text,
            symbols: Vec::new(),
            agenda: BinaryHeap::new(),
            rev_merge: HashMap::new(),
        }
    }

    /// Appends the next character (or user-defined symbol) of the segment.
    fn push(&mut self, start: usize, len: usize, freeze: bool) {
        let index = self.symbols.len() as u32;
        if let Some(last) = self.symbols.last_mut() {
            last.next = index;
        }
        self.symbols.push(Symbol {
            start: start as u32,
            len: len as u32,
            prev: index.checked_sub(1).unwrap_or(NONE),
            next: NONE,
            freeze,
        });
    }

    /// Merges the pending segment, writes its pieces to `out` and starts a new one.
    fn finish(&mut self, out: &mut IdWriter) {
        if self.symbols.is_empty() {
            return;
        }
        for i in 1..self.symbols.len() as u32 {
            self.maybe_add_pair(i - 1, i);
        }
        self.run();
        let mut i = 0;
        while i != NONE {
            let s = self.symbols[i as usize];
            self.resegment(s.start as usize, s.len as usize, out);
            i = s.next;
        }
        self.symbols.clear();
    }

    /// Queues the merge of `left` and `right` if their concatenation is a piece.
    fn maybe_add_pair(&mut self, left: u32, right: u32) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (self.symbols[left as usize], self.symbols[right as usize]);
        if l.freeze || r.freeze {
            return;
        }
        let len = l.len + r.len;
        if len as usize > self.model.max_normal_len {
            return;
        }
        // Neighbours are adjacent in the text, so the pair is one contiguous slice.
        let start = l.start as usize;
        let Some(&id) = self
            .model
            .vocab
            .normal
            .get(&self.text[start..start + len as usize])
        else {
            return;
        };
        let piece = &self.model.vocab.pieces[id as usize];
        self.agenda.push(Candidate {
            score: piece.score,
            left,
            right,
            len,
        });
        if piece.kind == Kind::Unused {
            self.rev_merge.insert(id, l.len);
        }
    }

    fn run(&mut self) {
        while let Some(top) = self.agenda.pop() {
            let (l, r) = (
                self.symbols[top.left as usize],
                self.symbols[top.right as usize],
            );
            // Stale entry: one side was merged away or has grown since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != top.len {
                continue;
            }
            self.symbols[top.left as usize].len = top.len;
            self.symbols[top.left as usize].next = r.next;
            if r.next != NONE {
                self.symbols[r.next as usize].prev = top.left;
            }
            self.symbols[top.right as usize].len = 0;
            self.maybe_add_pair(l.prev, top.left);
            self.maybe_add_pair(top.left, r.next);
        }
    }

    /// Writes the piece at `text[start..start + len]`, split back into the pieces it
    /// was merged from if it is an UNUSED piece (recursively, as the C++ `resegment`).
    fn resegment(&self, start: usize, len: usize, out: &mut IdWriter) {
        let w = &self.text[start..start + len];
        let id = self.model.lookup(w);
        if self.model.vocab.pieces[id as usize].kind == Kind::Unused {
            if let Some(&left) = self.rev_merge.get(&id) {
                let left = left as usize;
                self.resegment(start, left, out);
                self.resegment(start + left, len - left, out);
                return;
            }
        }
        out.push(w);
    }
}

/// Length of the UTF-8 sequence that `lead` starts (string_util::OneCharLen).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0xBF => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xFF => 4,
    }
}

/// The byte of a `<0xXX>` piece (two upper-case hex digits, as the C++ writes them).
fn piece_to_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Appends `bytes` read as UTF-8, one U+FFFD per invalid byte as the C++ decoder does
/// (Rust's `from_utf8_lossy` would fold an invalid sequence into one U+FFFD).
fn push_utf8_lossy_per_byte(out: &mut String, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = utf8_len(bytes[0]).min(bytes.len());
        match std::str::from_utf8(&bytes[..n]) {
            Ok(s) => {
                out.push_str(s);
                bytes = &bytes[n..];
            }
            Err(_) => {
                out.push('\u{FFFD}');
                bytes = &bytes[1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: i32) -> proto::SentencePiece {
        proto::SentencePiece {
            piece: Some(text.into()),
            score: Some(score),
            r#type: Some(kind),
        }
    }

    /// A small BPE model: `<unk>`, `<s>`, `</s>`, then `extra` pieces.
    fn model(extra: &[(&str, f32, i32)], byte_fallback: bool, remove_ws: bool) -> SentencePiece {
        let mut pieces = vec![
            piece("<unk>", 0.0, proto::UNKNOWN),
            piece("<s>", 0.0, proto::CONTROL),
            piece("</s>", 0.0, proto::CONTROL),
        ];
        if byte_fallback {
            pieces.extend((0..=255u8).map(|b| piece(&format!("<0x{b:02X}>"), 0.0, proto::BYTE)));
        }
        pieces.extend(extra.iter().map(|&(t, s, k)| piece(t, s, k)));
        let m = proto::ModelProto {
            pieces,
            trainer_spec: Some(proto::TrainerSpec {
                model_type: Some(proto::BPE),
                byte_fallback: Some(byte_fallback),
                ..Default::default()
            }),
            normalizer_spec: Some(proto::NormalizerSpec {
                name: Some("identity".into()),
                remove_extra_whitespaces: Some(remove_ws),
                ..Default::default()
            }),
        };
        SentencePiece::from_bytes(&m.encode_to_vec()).unwrap()
    }

    fn pieces_of(sp: &SentencePiece, text: &str) -> Vec<String> {
        sp.encode(text)
            .iter()
            .map(|&i| sp.id_to_piece(i).unwrap().to_owned())
            .collect()
    }

    const N: i32 = proto::NORMAL;

    #[test]
    fn highest_score_then_leftmost() {
        let sp = model(
            &[
                ("▁", -1.0, N),
                ("a", -1.0, N),
                ("b", -1.0, N),
                ("ab", -2.0, N),
                ("▁a", -3.0, N),
            ],
            false,
            false,
        );
        // "▁ab": "ab" outscores "▁a".
        assert_eq!(pieces_of(&sp, "ab"), ["▁", "ab"]);
        // Equal scores: the leftmost pair merges first, and then "ab" can no longer form.
        let tie = model(
            &[
                ("▁", -1.0, N),
                ("a", -1.0, N),
                ("b", -1.0, N),
                ("ab", -2.0, N),
                ("▁a", -2.0, N),
            ],
            false,
            false,
        );
        assert_eq!(pieces_of(&tie, "ab"), ["▁a", "b"]);
    }

    #[test]
    fn unknown_runs_merge_without_byte_fallback() {
        let sp = model(&[("▁", -1.0, N), ("a", -1.0, N)], false, false);
        assert_eq!(sp.encode("a\u{4e00}\u{4e01}a"), [3, 4, 0, 4]);
    }

    #[test]
    fn byte_fallback_emits_utf8_bytes() {
        let sp = model(&[("▁", -1.0, N), ("a", -1.0, N)], true, false);
        let ids = sp.encode("aé");
        let p: Vec<_> = ids.iter().map(|&i| sp.id_to_piece(i).unwrap()).collect();
        assert_eq!(p, ["▁", "a", "<0xC3>", "<0xA9>"]);
        assert_eq!(sp.decode(&ids).unwrap(), "aé");
    }

    #[test]
    fn unused_pieces_are_split_again() {
        let sp = model(
            &[
                ("▁", -1.0, N),
                ("a", -1.0, N),
                ("b", -1.0, N),
                ("c", -1.0, N),
                ("ab", -2.0, N),
                ("abc", -3.0, proto::UNUSED),
            ],
            false,
            false,
        );
        assert_eq!(pieces_of(&sp, "abc"), ["▁", "ab", "c"]);
    }

    #[test]
    fn user_defined_symbols_are_atoms() {
        let sp = model(
            &[
                ("▁", -1.0, N),
                ("a", -1.0, N),
                ("b", -1.0, N),
                ("ab", -2.0, N),
                ("<sep>", 0.0, proto::USER_DEFINED),
            ],
            false,
            false,
        );
        assert_eq!(pieces_of(&sp, "a<sep>b"), ["▁", "a", "<sep>", "b"]);
        // Control pieces are never matched in text.
        assert!(!sp.encode("<s>").contains(&1));
    }

    #[test]
    fn whitespace_handling() {
        let keep = model(&[("▁", -1.0, N), ("a", -1.0, N)], false, false);
        assert_eq!(keep.normalize("  a  a "), "▁▁▁a▁▁a▁");
        let squeeze = model(&[("▁", -1.0, N), ("a", -1.0, N)], false, true);
        assert_eq!(squeeze.normalize("  a  a "), "▁a▁a");
        assert_eq!(squeeze.normalize("   "), "");
        assert_eq!(keep.normalize("a\tb\n"), "▁a\tb\n");
        assert!(keep.encode("").is_empty());
    }

    /// Cutting the text where no merge can cross must give the same ids as one queue
    /// over the whole text.
    #[test]
    fn segmented_equals_global() {
        let sp = model(
            &[
                ("▁", -1.0, N),
                ("a", -1.0, N),
                ("b", -1.0, N),
                ("c", -1.0, N),
                ("ab", -2.0, N),
                ("bc", -2.0, N),
                ("▁▁", -3.0, N),
                ("▁a", -4.0, N),
                ("abc", -5.0, N),
                ("c▁", -6.0, N),
                ("▁▁▁", -3.0, N),
                ("▁ab", -2.5, N),
                ("<x>", 0.0, proto::USER_DEFINED),
            ],
            true,
            false,
        );
        assert!(sp.segmentable);
        let mut global = sp.clone();
        global.segmentable = false;
        let alphabet = ["a", "b", "c", " ", "x", "é", "<x>"];
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for _ in 0..3000 {
            let n = next() % 40;
            let s: String = (0..n).map(|_| alphabet[next() % alphabet.len()]).collect();
            assert_eq!(sp.encode(&s), global.encode(&s), "{s:?}");
        }
    }

    #[test]
    fn rejects_unigram() {
        let m = proto::ModelProto {
            pieces: vec![piece("<unk>", 0.0, proto::UNKNOWN)],
            ..Default::default()
        };
        let err = SentencePiece::from_bytes(&m.encode_to_vec()).unwrap_err();
        assert!(format!("{err:#}").contains("unigram"), "{err:#}");
    }
}
