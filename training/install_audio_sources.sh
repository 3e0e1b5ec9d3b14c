#!/usr/bin/env bash
# Install the Debian 12 packages that ship real audio used as unlabelled training audio
# (the teacher classifiers label it), and render the MIDI music of some of them to FLAC.
#
#   bash training/install_audio_sources.sh                   # install + render
#   bash training/install_audio_sources.sh --print-packages  # the curated list, one per line
#   bash training/install_audio_sources.sh --no-render       # install only
#
# Package audio stays where Debian puts it (under /usr/share); `python -m training sources
# index` finds it through the table in training/source_catalogue.py, which must list the same packages.
# Rendered audio goes to $ST_AUDIO_SOURCES (default ~/.cache/spectral_transcoder/audio-sources):
#   midi/<package>/<path under /usr/share>.flac   32 kHz mono FLAC, at most ST_MIDI_MAX_SECONDS
#                                                 (default 120) s, peak normalised to -1 dBFS
#   midi/manifest.tsv                             package, MIDI file, FLAC (relative), status
# A MIDI file that fails to render leaves <name>.failed (with the reason) and is not retried.
# Idempotent: with everything installed and rendered, a rerun only checks (seconds).
# Needs root (or sudo) only when packages are missing. Total installed size: about 3 GB.
set -euo pipefail

DEST="${ST_AUDIO_SOURCES:-$HOME/.cache/spectral_transcoder/audio-sources}"
MAX_SECONDS="${ST_MIDI_MAX_SECONDS:-120}"
RATE=32000
SOUNDFONT=/usr/share/sounds/sf2/FluidR3_GM.sf2

# Recorded speech: telephone prompts (8 kHz) in five languages, dubbed game dialogue
# (Czech, Dutch and the base set), spoken letters and words of educational software.
SPEECH=(
  asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav
  asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-prompt-it-menardi-wav
  fillets-ng-data fillets-ng-data-cs fillets-ng-data-nl
  klettres-data ktuberling-data
)
# Sound effects (several also ship music or ambiences: the table in source_catalogue.py splits them).
# Left out: packages whose clips are nearly all under the index's 0.5 s minimum (bucklespring-data
# key clicks, gcin-voice syllables), and very large ones (0ad-data, redeclipse-data, flightgear).
SFX=(
  tuxpaint-stamps-default hedgewars-data wesnoth-1.16-data supertux-data pingus-data
  frozen-bubble-data sound-theme-freedesktop oxygen-sounds gnome-audio
  lomiri-sounds warmux-data megaglest-data colobot-common-sounds lincity-ng-data freedink-data
)
# Recorded or produced music and instrument samples.
MUSIC=(
  wesnoth-1.16-music hydrogen-drumkits sonic-pi-samples drascula-music hyperrogue-music
  singularity-music fretsonfire-songs-muldjord fretsonfire-songs-sectoid asterisk-moh-opsound-wav
)
# Packages whose .mid/.midi files are rendered (freedink-data is also in SFX).
MIDI=(mma simutrans-data openttd-openmsx planetblupi-music-midi kobodeluxe-data freedink-data)
TOOLS=(fluidsynth fluid-soundfont-gm sox)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

RENDER=1
case "${1:-}" in
  --print-packages) printf '%s\n' "${SPEECH[@]}" "${SFX[@]}" "${MUSIC[@]}" "${MIDI[@]}" | sort -u; exit 0 ;;
  --print-midi-packages) printf '%s\n' "${MIDI[@]}"; exit 0 ;;
  --no-render) RENDER=0 ;;
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
esac

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

# ------------------------------------------------------------------ install
missing=()
for p in $(printf '%s\n' "${SPEECH[@]}" "${SFX[@]}" "${MUSIC[@]}" "${MIDI[@]}" "${TOOLS[@]}" | sort -u); do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  echo "installing ${#missing[@]} package(s): ${missing[*]}"
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all $(printf '%s\n' "${SPEECH[@]}" "${SFX[@]}" "${MUSIC[@]}" "${MIDI[@]}" "${TOOLS[@]}" | sort -u | wc -l) packages already installed"
fi
((RENDER)) || exit 0

# ------------------------------------------------------------------ render MIDI
[ -f "$SOUNDFONT" ] || { echo "soundfont $SOUNDFONT missing (fluid-soundfont-gm)" >&2; exit 1; }
OUT="$DEST/midi"
mkdir -p "$OUT"
TMP=$(mktemp -d "$OUT/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
MANIFEST_NEW="$TMP/manifest.tsv"
printf 'package\tmidi\tflac\tstatus\n' >"$MANIFEST_NEW"

# render MIDI FLAC: MIDI -> float WAV (fluidsynth, 32 kHz) -> mono, capped, peak -1 dBFS FLAC (sox).
render() {
  local mid=$1 flac=$2 wav="$TMP/render.wav" peak
  rm -f "$wav"
  timeout 600 fluidsynth -n -i -q -g 0.5 -r "$RATE" -O float -T wav -F "$wav" "$SOUNDFONT" "$mid" \
    </dev/null >"$TMP/log" 2>&1 || { echo "fluidsynth failed: $(tail -n 1 "$TMP/log")"; return 1; }
  [ -s "$wav" ] || { echo "fluidsynth wrote no audio"; return 1; }
  peak=$(sox "$wav" -n stat 2>&1 | awk '/Maximum amplitude/ {print $3}')
  awk -v p="${peak:-0}" 'BEGIN {exit !(p > 0.0001)}' || { echo "silent rendering (peak ${peak:-?})"; return 1; }
  sox -q "$wav" -t flac -b 16 "$flac.part" remix - rate -v "$RATE" trim 0 "$MAX_SECONDS" gain -n -1 \
    2>"$TMP/log" || { echo "sox failed: $(tail -n 1 "$TMP/log")"; return 1; }
  mv -f "$flac.part" "$flac"
}

done_n=0; new_n=0; failed_n=0
for pkg in "${MIDI[@]}"; do
  while IFS= read -r mid; do
    [ -f "$mid" ] || continue
    rel=${mid#/usr/share/}
    flac="$OUT/$pkg/${rel%.*}.flac"
    mkdir -p "$(dirname "$flac")"
    if [ -f "$flac" ]; then
      status=ok; done_n=$((done_n + 1))
    elif [ -f "${flac%.flac}.failed" ]; then
      status=failed; failed_n=$((failed_n + 1))
    elif reason=$(render "$mid" "$flac"); then
      status=ok; new_n=$((new_n + 1)); echo "rendered $mid"
    else
      printf '%s\n' "$reason" >"${flac%.flac}.failed"
      rm -f "$flac.part"
      status=failed; failed_n=$((failed_n + 1)); echo "failed $mid: $reason" >&2
    fi
    printf '%s\t%s\t%s\t%s\n' "$pkg" "$mid" "${flac#"$OUT"/}" "$status" >>"$MANIFEST_NEW"
  done < <(dpkg -L "$pkg" | grep -iE '\.(mid|midi)$' | sort)
done
mv -f "$MANIFEST_NEW" "$OUT/manifest.tsv"
echo "MIDI: $new_n rendered now, $done_n already rendered, $failed_n failed; in $OUT"
