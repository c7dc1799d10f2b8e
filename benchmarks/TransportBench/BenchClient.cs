using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace TransportBench;

/// <summary>
/// The load, run in its own process so its CPU and allocations never count against the server:
/// concurrent loops of connect, send 1 byte, receive 1 byte, receive until the server's FIN, close.
/// </summary>
internal sealed class BenchClient(int port, TimeSpan duration, int concurrency)
{
    // After the deadline, connections in flight get this long before they are cancelled (and counted).
    private static readonly TimeSpan HardStopGrace = TimeSpan.FromSeconds(3);

    private readonly IPEndPoint _server = new(IPAddress.Loopback, port);
    private readonly ConcurrentDictionary<string, int> _errorKinds = new();
    private long _succeeded;
    private long _errors;

    public long Succeeded => Interlocked.Read(ref _succeeded);

    public long Errors => Interlocked.Read(ref _errors);

    public IReadOnlyDictionary<string, int> ErrorKinds => _errorKinds;

    public async Task RunAsync()
    {
        var deadline = DateTime.UtcNow + duration;
        using var hardStop = new CancellationTokenSource(duration + HardStopGrace);
        var loops = new Task[concurrency];
        for (var i = 0; i < loops.Length; i++)
        {
            loops[i] = Task.Run(() => LoopAsync(deadline, hardStop.Token));
        }

        await Task.WhenAll(loops).ConfigureAwait(false);
    }

    private async Task LoopAsync(DateTime deadline, CancellationToken hardStop)
    {
        var request = new byte[] { (byte)'x' };
        var response = new byte[16];
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                await OneConnectionAsync(request, response, hardStop).ConfigureAwait(false);
                Interlocked.Increment(ref _succeeded);
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException or InvalidDataException)
            {
                Interlocked.Increment(ref _errors);
                var kind = ex is SocketException se ? se.SocketErrorCode.ToString() : ex.GetType().Name;
                _errorKinds.AddOrUpdate(kind, 1, static (_, n) => n + 1);
                if (hardStop.IsCancellationRequested)
                {
                    return;
                }
            }
        }
    }

    private async Task OneConnectionAsync(byte[] request, byte[] response, CancellationToken cancellationToken)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(_server, cancellationToken).ConfigureAwait(false);
        await socket.SendAsync(request, SocketFlags.None, cancellationToken).ConfigureAwait(false);

        var received = 0;
        int n;
        while ((n = await socket.ReceiveAsync(response, SocketFlags.None, cancellationToken).ConfigureAwait(false)) > 0)
        {
            received += n;
        }

        // End of stream: the server's FIN arrived after exactly its one byte.
        if (received != 1)
        {
            throw new InvalidDataException($"expected 1 byte before the server's FIN, got {received}");
        }
    }
}
