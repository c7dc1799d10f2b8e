using System.Net.Sockets;
using Transport.Tests.Infrastructure;
using Transport.Winsock.AcceptPool;

namespace Transport.Tests.AcceptPool;

/// <summary>
/// The descriptor reserve's estimate between counts: it may err high (accepts are held back a moment too
/// soon), never low (the process runs out of descriptors with accepts still posted).
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class DescriptorReserveTests
{
    /// <summary>
    /// Connections that close while a count runs (a listing of /proc/self/fd takes ~50 ms at 15,000
    /// descriptors on kernels before 6.2) are either in the count or gone from it, and must not also be
    /// taken off it afterwards: with the closes read before the count, every one of them was.
    /// </summary>
    [Theory(Skip = ProcessSockets.Unsupported, SkipUnless = nameof(ProcessSockets.IsSupported), SkipType = typeof(ProcessSockets))]
    [InlineData(true)]
    [InlineData(false)]
    public void Closes_during_a_count_never_make_the_estimate_fall_below_the_open_descriptors(bool listing)
    {
        const int Closed = 300;
        var sockets = new List<Socket>();
        for (var i = 0; i < Closed; i++)
        {
            sockets.Add(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        }

        DescriptorReserve.ForceListing = listing;
        DescriptorReserve.CountStarting = () =>
        {
            // As connections of a listener with a reserve do: the descriptor goes, then the close is told.
            foreach (var socket in sockets)
            {
                socket.Dispose();
                DescriptorReserve.OnClosed();
            }

            DescriptorReserve.CountStarting = null;
        };
        try
        {
            DescriptorReserve.Recount();
        }
        finally
        {
            DescriptorReserve.CountStarting = null;
            DescriptorReserve.ForceListing = false;
            foreach (var socket in sockets)
            {
                socket.Dispose();
            }
        }

        var open = Directory.GetFileSystemEntries("/proc/self/fd").Length;
        var estimate = DescriptorReserve.Estimate;
        // Another thread of the runtime may open or close a few descriptors in between; 300 is far beyond that.
        Assert.True(estimate >= open - (Closed / 3), $"estimate {estimate} with {open} descriptors open, after {Closed} closed during the count");
        Assert.True(estimate <= open + (Closed / 3), $"estimate {estimate} with {open} descriptors open: a count just taken should be about right");
    }
}
