namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The other ways #11 asked the engine to be measured in, kept so the measurement can be repeated
/// (<c>benchmarks/iouring-variants.sh</c>, docs/benchmarks.md): not options, since the defaults are the
/// cheaper ones. <c>WINSOCK_IOURING_VARIANT=registered</c> accepts into slots of a registered file table
/// (IORING_FILE_INDEX_ALLOC: direct descriptors, no entry in the process's descriptor table) and sends the
/// FIN with IORING_OP_SHUTDOWN; <c>ring-fin</c> keeps plain descriptors and sends the FIN with
/// IORING_OP_SHUTDOWN. Unset: plain descriptors and shutdown(2). Read when a ring starts (descriptors) and
/// at each FIN; tests set them directly.
/// </summary>
internal static class IoUringVariants
{
    private static readonly string? s_variant = Environment.GetEnvironmentVariable("WINSOCK_IOURING_VARIANT");

    /// <summary>Slots of each ring's registered file table, when <see cref="RegisteredFiles"/> is on.</summary>
    public const uint FileTableSize = 16384;

    /// <summary>Accepts into direct descriptors (rings started from now on); needs IORING_OP_URING_CMD's setsockopt for an abort's SO_LINGER (6.7).</summary>
    public static bool RegisteredFiles { get; set; } = s_variant == "registered";

    /// <summary>The FIN as IORING_OP_SHUTDOWN rather than shutdown(2); always so for a direct descriptor.</summary>
    public static bool RingFin { get; set; } = s_variant is "registered" or "ring-fin";

    /// <summary>What the engine status adds when a variant is on (nothing for the defaults).</summary>
    public static string Describe(RingThread ring)
    {
        if (RegisteredFiles)
        {
            return ring.HasFileTable
                ? "; variant: registered files (for a listener on one address), FIN by IORING_OP_SHUTDOWN"
                : "; variant: registered files asked for, and this kernel lacks what they need (plain descriptors)";
        }

        return RingFin ? "; variant: FIN by IORING_OP_SHUTDOWN" : "";
    }
}
