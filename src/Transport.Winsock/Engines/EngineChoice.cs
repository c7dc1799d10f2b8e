using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Winsock.Engines;

/// <summary>
/// The engine a listener runs on and why; with io_uring, the ring threads made for it (the listener
/// owns them from then on).
/// </summary>
internal sealed record EngineChoice(WinsockEngine Engine, string Reason, RingThread[]? Rings)
{
    /// <summary>
    /// Applies <see cref="WinsockTransportOptions.Engine"/>: io_uring where asked for or, with Auto, where
    /// the process-wide probe passed and the listener's rings could be made; else the sockets engine.
    /// Throws when io_uring was asked for and cannot run, naming the option and the errno.
    /// </summary>
    public static EngineChoice Decide(WinsockTransportOptions options, System.Net.EndPoint endPoint, ILogger logger)
    {
        var asked = options.Engine;
        if (asked == WinsockEngine.Sockets)
        {
            return Chosen(new(WinsockEngine.Sockets, "sockets: WinsockTransportOptions.Engine is Sockets", null), endPoint, logger);
        }

        if (asked == WinsockEngine.Auto && options.ReuseSockets == true)
        {
            return Chosen(new(WinsockEngine.Sockets, "sockets: WinsockTransportOptions.ReuseSockets is true, and the sockets engine is the one that recycles sockets", null), endPoint, logger);
        }

        if (!OperatingSystem.IsLinux())
        {
            var reason = $"sockets: io_uring is Linux's; this is {(OperatingSystem.IsWindows() ? "Windows, where the sockets engine is AcceptEx and DisconnectEx" : System.Runtime.InteropServices.RuntimeInformation.OSDescription)}";
            return asked == WinsockEngine.IoUring ? Refused(reason, endPoint, logger) : Chosen(new(WinsockEngine.Sockets, reason, null), endPoint, logger);
        }

        var probe = IoUringProbe.Result;
        if (!probe.Passed)
        {
            var reason = $"sockets: the io_uring probe failed: {probe.Reason}";
            return asked == WinsockEngine.IoUring ? Refused(reason, endPoint, logger) : Chosen(new(WinsockEngine.Sockets, reason, null), endPoint, logger);
        }

        var count = options.IoUringThreadCount > 0 ? options.IoUringThreadCount : Math.Clamp(Environment.ProcessorCount / 2, 1, 16);
        var rings = new RingThread[count];
        // What a ring thread logs (its own failure, a posted work item's) is written off the ring.
        var ringLogger = new EngineThreadLogger(logger);
        // Each ring's completion queue from the descriptor limit and its share of the accepts (RingCapacity).
        var acceptsPerRing = (IoUringListenerEngine.AcceptSlots(options, count) + count - 1) / count;
        var cqEntries = RingCapacity.ChooseCqEntries(RingCapacity.DescriptorLimit(), acceptsPerRing);
        for (var i = 0; i < count; i++)
        {
            var ring = RingThread.TryStart($"io_uring {endPoint} #{i}", ringLogger, cqEntries, out var failure);
            if (ring is null)
            {
                for (var j = 0; j < i; j++)
                {
                    rings[j].Dispose();
                }

                var reason = $"sockets: making the listener's io_uring ring {i + 1} of {count} {failure}";
                return asked == WinsockEngine.IoUring ? Refused(reason, endPoint, logger) : Chosen(new(WinsockEngine.Sockets, reason, null), endPoint, logger);
            }

            rings[i] = ring;
        }

        var why = asked == WinsockEngine.IoUring ? "WinsockTransportOptions.Engine is IoUring" : "Auto, and the probe passed";
        return Chosen(new(WinsockEngine.IoUring, $"io_uring: {why} ({probe.Reason}); {count} ring thread{(count == 1 ? "" : "s")}{IoUringVariants.Describe(rings[0])}", rings), endPoint, logger);
    }

    private static EngineChoice Chosen(EngineChoice choice, System.Net.EndPoint endPoint, ILogger logger)
    {
        logger.EngineChosen(endPoint, choice.Engine == WinsockEngine.IoUring ? "io_uring" : "sockets", choice.Reason);
        return choice;
    }

    private static EngineChoice Refused(string reason, System.Net.EndPoint endPoint, ILogger logger)
    {
        logger.EngineRefused(endPoint, "none", reason);
        throw new NotSupportedException($"WinsockTransportOptions.Engine is IoUring, but io_uring cannot run for {endPoint}: {reason["sockets: ".Length..]}. Use Auto to fall back to the sockets engine.");
    }
}
