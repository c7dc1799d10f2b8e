using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;

namespace Transport.Benchmarks;

/// <summary>
/// The reuse pool's hot path: a posted accept rents a disconnected socket (<see cref="SocketPool.TryRent"/>)
/// and the recycler gives it back after its reuse disconnect (<see cref="SocketPool.TryReturn"/>). Real
/// <see cref="SocketPool"/> and <see cref="ReusableSocket"/>s over real, unconnected sockets; a round trip
/// should allocate nothing.
/// </summary>
[MemoryDiagnoser]
public class SocketPoolBenchmarks : IDisposable
{
    private const int PooledSockets = 4;

    private SocketPool _pool = null!;

    [GlobalSetup]
    public void Setup()
    {
        _pool = new SocketPool(capacity: 16, new WinsockTransportCounters());
        for (var i = 0; i < PooledSockets; i++)
        {
            var socket = new ReusableSocket(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
            if (!_pool.TryReturn(socket))
            {
                socket.Dispose();
                throw new InvalidOperationException("The pool refused a socket during setup.");
            }
        }
    }

    [Benchmark]
    public bool RentAndReturn()
    {
        var socket = _pool.TryRent() ?? throw new InvalidOperationException("The pool is empty.");
        return _pool.TryReturn(socket);
    }

    /// <summary>Closes the pooled sockets; BenchmarkDotNet's cleanup, and idempotent.</summary>
    [GlobalCleanup]
    public void Dispose()
    {
        _pool?.Dispose();
        GC.SuppressFinalize(this);
    }
}
