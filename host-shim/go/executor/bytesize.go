package executor

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// ByteSize is a number of bytes that travels as Go's datasize text ("1GB", "2KB", "1500B").
type ByteSize uint64

// The 1024-based units.
const (
	B  ByteSize = 1
	KB          = B << 10
	MB          = KB << 10
	GB          = MB << 10
	TB          = GB << 10
	PB          = TB << 10
	EB          = PB << 10
)

var units = []struct {
	size ByteSize
	name string
}{{EB, "EB"}, {PB, "PB"}, {TB, "TB"}, {GB, "GB"}, {MB, "MB"}, {KB, "KB"}}

// String is the largest unit that divides the size exactly: "1GB", "1500B", "0B".
func (b ByteSize) String() string {
	for _, u := range units {
		if b >= u.size && b%u.size == 0 {
			return fmt.Sprintf("%d%s", b/u.size, u.name)
		}
	}
	return fmt.Sprintf("%dB", uint64(b))
}

// Bytes is the size as a number.
func (b ByteSize) Bytes() uint64 { return uint64(b) }

// MarshalText writes String.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText reads a number of bytes with an optional unit (k, kb, kib, kilobyte(s), ... in
// any case, spaces allowed); bit spellings such as "10Mb" are refused.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// ParseByteSize reads what UnmarshalText accepts.
func ParseByteSize(text string) (ByteSize, error) {
	s := strings.TrimSpace(text)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("datasize: invalid syntax %q", text)
	}
	n, err := strconv.ParseUint(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("datasize: %q: %w", text, err)
	}
	unit := strings.TrimSpace(s[i:])
	if unit == "" {
		return ByteSize(n), nil
	}
	// "Kb", "Mb": a capital prefix and a lower-case b are bits.
	if len(unit) == 2 && unicode.IsUpper(rune(unit[0])) && unit[1] == 'b' {
		return 0, fmt.Errorf("datasize: %q is a size in bits, not bytes", text)
	}
	mult := map[string]ByteSize{
		"b": B, "byte": B, "bytes": B,
		"k": KB, "kb": KB, "kib": KB, "kilobyte": KB, "kilobytes": KB,
		"m": MB, "mb": MB, "mib": MB, "megabyte": MB, "megabytes": MB,
		"g": GB, "gb": GB, "gib": GB, "gigabyte": GB, "gigabytes": GB,
		"t": TB, "tb": TB, "tib": TB, "terabyte": TB, "terabytes": TB,
		"p": PB, "pb": PB, "pib": PB, "petabyte": PB, "petabytes": PB,
		"e": EB, "eb": EB, "eib": EB, "exabyte": EB, "exabytes": EB,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("datasize: unknown unit in %q", text)
	}
	if n > uint64(^ByteSize(0)/mult) {
		return 0, fmt.Errorf("datasize: %q is too large", text)
	}
	return ByteSize(n) * mult, nil
}
