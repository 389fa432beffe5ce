#!/usr/bin/env bash
# Tools the benchmarks need beyond the Python environment, each installed only when missing:
#   wrk                 the closed-loop HTTP load generator bench/roundtrip.py drives (Debian package `wrk`);
#   orthanc,            the DICOM server bench/dicomweb.py runs on loopback next to ours, with its DICOMweb
#   orthanc-dicomweb    plugin (Debian packages). The script starts its own Orthanc with a generated
#                       configuration in a temporary directory; where the package also starts a system
#                       service (port 8042/4242), that one is not used.
set -euo pipefail

ORTHANC_BIN=/usr/sbin/Orthanc
ORTHANC_DICOMWEB=/usr/share/orthanc/plugins/libOrthancDicomWeb.so

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x "$ORTHANC_BIN" ] || missing+=(orthanc)
[ -f "$ORTHANC_DICOMWEB" ] || missing+=(orthanc-dicomweb)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench-tools: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "bench-tools: $(wrk --version 2>&1 | head -n1 || true)"
echo "bench-tools: $("$ORTHANC_BIN" --version 2>&1 | head -n1 || true), DICOMweb plugin $(dpkg-query -W -f='${Version}' orthanc-dicomweb 2>/dev/null || echo '?')"
