namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The oldest kernel the engine runs on: 5.19. It needs IORING_FEAT_NODROP (5.5), IORING_ENTER_EXT_ARG for
/// bounded waits (5.11), IOSQE_CQE_SKIP_SUCCESS (5.17), IORING_SETUP_SUBMIT_ALL (5.18) and
/// IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY | ALL (5.19), which ends what is in flight when a
/// ring stops. IORING_REGISTER_SYNC_CANCEL (6.0) is used where present, never required. The features are
/// read from each ring's setup; the setup flag and the cancel show only in the probe, which tries them.
/// Below the floor <c>Auto</c> takes the sockets engine and <c>IoUring</c> fails the start, both saying
/// which of these the kernel lacked (a backport that has them all passes).
/// </summary>
internal static class KernelFloor
{
    public const string Version = "5.19";

    /// <summary>Null when <paramref name="features"/> (IORING_FEAT_*) has everything the engine needs, else which is missing.</summary>
    public static string? CheckFeatures(uint features)
    {
        if ((features & RingConstants.FeatNoDrop) == 0)
        {
            return Older("no IORING_FEAT_NODROP (5.5)");
        }

        if ((features & RingConstants.FeatExtArg) == 0)
        {
            return Older("no IORING_FEAT_EXT_ARG (5.11)");
        }

        return (features & RingConstants.FeatCqeSkip) == 0 ? Older("no IORING_FEAT_CQE_SKIP (5.17)") : null;
    }

    /// <summary>Why a kernel whose io_uring_setup refused the engine's flags with EINVAL is below the floor, or null when even a plain ring is refused.</summary>
    public static string? CheckSetupFlags()
    {
        if (!Ring.SetsUpWith(0))
        {
            return null;
        }

        return Ring.SetsUpWith(RingConstants.SetupCqSize)
            ? Older("io_uring_setup refuses IORING_SETUP_SUBMIT_ALL (5.18)")
            : Older("io_uring_setup refuses IORING_SETUP_CQSIZE (5.5)");
    }

    public static string CancelAllRefused => Older("IORING_OP_ASYNC_CANCEL refuses IORING_ASYNC_CANCEL_ANY | ALL (5.19)");

    private static string Older(string why) => $"kernel older than {Version}: {why}";
}
