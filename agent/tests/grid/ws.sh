# A websocket echo server for one connection (stdin and stdout are the socket;
# busybox nc -ll -e runs it per connection): the handshake, then each frame from
# the client unmasked and sent back, until a close frame or the end.
key=
while IFS= read -r line; do
  line=$(printf %s "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in
    [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(echo "${line#*:}" | tr -d ' ') ;;
  esac
done
[ -n "$key" ] || exit 0
accept=$(printf %s258EAFA5-E914-47DA-95CA-C5AB0DC85B11 "$key" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
bytes() { dd bs=1 count=$1 2>/dev/null | od -An -tu1; }
while :; do
  set -- $(bytes 2)
  [ $# -eq 2 ] || exit 0
  op=$(($1 & 15)); len=$(($2 & 127))
  [ $len -lt 126 ] || exit 0
  set -- $(bytes 4)
  m0=$1 m1=$2 m2=$3 m3=$4
  out= i=0
  for b in $(bytes $len); do
    case $((i % 4)) in 0) k=$m0 ;; 1) k=$m1 ;; 2) k=$m2 ;; *) k=$m3 ;; esac
    out="$out\\$(printf %03o $((b ^ k)))"
    i=$((i + 1))
  done
  printf "\\$(printf %03o $((128 | op)))\\$(printf %03o $len)$out"
  [ $op -ne 8 ] || exit 0
done
