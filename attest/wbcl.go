package attest

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Windows boot configuration logs (WBCL) are TCG logs (legacy SHA-1 or
// crypto agile) whose Windows events (EV_EVENT_TAG in PCRs 11-14, and
// EV_NO_ACTION on PCR 0xFFFFFFFF) carry SIPA events: a type, a size and
// the data, a container type holding further SIPA events. They parse and
// replay like any TCG log; this file only makes them readable. The names
// are Microsoft's (wbcl.h, SIPAEVENT_*); values are read only where their
// size says what they are. Nothing here is a fact for policy.

const (
	sipaTypeMask  = 0x000f0000
	sipaContainer = 0x00010000
	// Descriptions of attacker-controlled data are bounded.
	sipaMaxDepth = 4
	sipaMaxDesc  = 1024
)

var sipaNames = map[uint32]string{
	0x40010001: "TrustBoundary", 0x40010002: "ELAMAggregation", 0x40010003: "LoadedModuleAggregation",
	0xC0010004: "TrustPointAggregation", 0x40010005: "KSRAggregation", 0x40010006: "KSRSignedMeasurementAggregation",
	0x00020001: "Information", 0x00020002: "BootCounter", 0x00020003: "TransferControl", 0x00020004: "ApplicationReturn",
	0x00020005: "BitlockerUnlock", 0x00020006: "EventCounter", 0x00020007: "CounterID", 0x00020008: "MORBitNotCancelable",
	0x00020009: "ApplicationSVN", 0x0002000A: "SVNChainStatus", 0x0002000B: "MORBitAPIStatus",
	0x00040001: "BootDebugging", 0x00040002: "BootRevocationList",
	0x00050001: "OSKernelDebug", 0x00050002: "CodeIntegrity", 0x00050003: "TestSigning", 0x00050004: "DataExecutionPrevention",
	0x00050005: "SafeMode", 0x00050006: "WinPE", 0x00050007: "PhysicalAddressExtension", 0x00050008: "OSDevice",
	0x00050009: "SystemRoot", 0x0005000A: "HypervisorLaunchType", 0x0005000B: "HypervisorPath", 0x0005000C: "HypervisorIOMMUPolicy",
	0x0005000D: "HypervisorDebug", 0x0005000E: "DriverLoadPolicy", 0x0005000F: "SIPolicy", 0x00050010: "HypervisorMMIONXPolicy",
	0x00050011: "HypervisorMSRFilterPolicy", 0x00050012: "VSMLaunchType", 0x00050013: "OSRevocationList",
	0x00050020: "VSMIDKInfo", 0x00050021: "FlightSigning", 0x00050022: "PagefileEncryptionEnabled", 0x00050023: "VSMIDKSInfo",
	0x00050024: "HibernationDisabled", 0x00050025: "DumpsDisabled", 0x00050026: "DumpEncryptionEnabled",
	0x00050027: "DumpEncryptionKeyDigest", 0x00050028: "LSAISOConfig",
	0x00060001: "NoAuthority", 0x00060002: "AuthorityPubKey",
	0x00070001: "FilePath", 0x00070002: "ImageSize", 0x00070003: "HashAlgorithmID", 0x00070004: "AuthenticodeHash",
	0x00070005: "AuthorityIssuer", 0x00070006: "AuthoritySerial", 0x00070007: "ImageBase", 0x00070008: "AuthorityPublisher",
	0x00070009: "AuthoritySHA1Thumbprint", 0x0007000A: "ImageValidated", 0x0007000B: "ModuleSVN",
	0x00080001: "Quote", 0x00080002: "QuoteSignature", 0x00080003: "AIKID", 0x00080004: "QuoteSignatureAlgorithm",
	0x00090001: "ELAMKeyname", 0x00090002: "ELAMConfiguration", 0x00090003: "ELAMPolicy", 0x00090004: "ELAMMeasured",
	0x000A0001: "VBSVSMRequired", 0x000A0002: "VBSSecurebootRequired", 0x000A0003: "VBSIOMMURequired",
	0x000A0004: "VBSNXRequired", 0x000A0005: "VBSMSRFilteringRequired", 0x000A0006: "VBSMandatoryEnforcement",
	0x000A0007: "VBSHVCIPolicy", 0x000A0008: "VBSMicrosoftBootChainRequired", 0x000B0001: "KSRSignature",
}

// sipaStrings are UTF-16LE strings.
var sipaStrings = map[uint32]bool{0x00050009: true, 0x0005000B: true, 0x00070001: true, 0x00070005: true, 0x00070008: true, 0x00090001: true}

// describeSIPA describes data as a sequence of SIPA events, or returns ""
// when it is not one (a size runs past the data, or a type is unknown at
// the top level, which ordinary event data would make it).
func describeSIPA(b []byte) string {
	var sb strings.Builder
	if !sipaEvents(&sb, b, 0) || sb.Len() == 0 {
		return ""
	}
	s := sb.String()
	if len(s) > sipaMaxDesc {
		s = s[:sipaMaxDesc] + "…"
	}
	return "SIPA " + s
}

func sipaEvents(sb *strings.Builder, b []byte, depth int) bool {
	first := true
	for len(b) > 0 {
		if len(b) < 8 || sb.Len() > sipaMaxDesc {
			return sb.Len() > sipaMaxDesc
		}
		typ, size := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
		if uint64(size) > uint64(len(b)-8) {
			return false
		}
		data := b[8 : 8+size]
		b = b[8+size:]
		name, known := sipaNames[typ]
		if !known {
			if depth == 0 {
				return false
			}
			name = fmt.Sprintf("0x%08x", typ)
		}
		if !first {
			sb.WriteString(", ")
		}
		first = false
		sb.WriteString(name)
		switch {
		case typ&sipaTypeMask == sipaContainer:
			sb.WriteString("{")
			if depth+1 >= sipaMaxDepth || !sipaEvents(sb, data, depth+1) {
				fmt.Fprintf(sb, "%d bytes", len(data))
			}
			sb.WriteString("}")
		case sipaStrings[typ]:
			sb.WriteString("=" + printableUCS2(data))
		case len(data) == 1:
			fmt.Fprintf(sb, "=%d", data[0])
		case len(data) == 4:
			fmt.Fprintf(sb, "=%d", binary.LittleEndian.Uint32(data))
		case len(data) == 8:
			fmt.Fprintf(sb, "=%d", binary.LittleEndian.Uint64(data))
		case len(data) <= 64:
			fmt.Fprintf(sb, "=%x", data)
		default:
			fmt.Fprintf(sb, "(%d bytes)", len(data))
		}
	}
	return true
}

// printableUCS2 decodes UTF-16LE and replaces control characters, so a log
// cannot put line breaks or escapes into a description.
func printableUCS2(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '.'
		}
		return r
	}, ucs2(b))
}
