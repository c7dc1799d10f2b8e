using System.Buffers;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using System.Net.Sockets;
using Transport.Winsock.Engines;
using Transport.Winsock.Interop;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Listener;

/// <summary>
/// Binds every TCP <see cref="IPEndPoint"/>; other endpoints (Unix domain sockets, named pipes, file
/// handles) are left to the other transports Kestrel has registered.
/// </summary>
internal sealed class WinsockTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    private readonly WinsockTransportOptions _options;
    private readonly WinsockTransportCounters _counters;
    private readonly IMemoryPoolFactory<byte>? _memoryPoolFactory;
    private readonly ILogger _logger;

    public WinsockTransportFactory(
        IOptions<WinsockTransportOptions> options,
        WinsockTransportCounters counters,
        Diagnostics.WinsockTransportMeter meter,
        ILoggerFactory loggerFactory,
        IMemoryPoolFactory<byte>? memoryPoolFactory = null)
    {
        // Reading Value runs the validator: bad options fail here, naming the option.
        _options = options.Value;
        _counters = counters;
        // The meter lives as long as the host's services; taking it here creates it with the transport.
        _ = meter;
        _memoryPoolFactory = memoryPoolFactory;
        _logger = loggerFactory.CreateLogger("Transport.Winsock");
    }

    public bool CanBind(EndPoint endpoint) => endpoint is IPEndPoint;

    public async ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        if (endpoint is not IPEndPoint ipEndPoint)
        {
            throw new NotSupportedException($"The Winsock reuse transport binds TCP endpoints (IPEndPoint) only; {endpoint.GetType().Name} '{endpoint}' is not supported.");
        }

        var listenSocket = ListenSocket.Create(ipEndPoint, _options);
        ReuseDecision reuse;
        EngineChoice engine;
        try
        {
            engine = EngineChoice.Decide(_options, listenSocket.LocalEndPoint!, _logger);
        }
        catch
        {
            listenSocket.Dispose();
            throw;
        }

        try
        {
            if (OperatingSystem.IsWindows() && WinsockExtensions.Probe(listenSocket, WinsockExtensions.AcceptEx) is var error and not SocketError.Success)
            {
                throw new NotSupportedException($"The Winsock provider for {endpoint} has no AcceptEx ({error}), so no transport can accept there with posted accepts; a layered provider (VPN, antivirus) may hide it.");
            }

            reuse = engine.Engine == WinsockEngine.IoUring
                ? ReuseDecision.ForIoUring(_options)
                : await ReuseDecision.DecideAsync(_options, listenSocket).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            if (engine.Rings is { } rings)
            {
                foreach (var ring in rings)
                {
                    ring.Dispose();
                }
            }

            listenSocket.Dispose();
            throw;
        }

        // The same pinned-block pool Kestrel's own transports take, when Kestrel has registered it.
        var memoryPool = _memoryPoolFactory?.Create(new MemoryPoolOptions { Owner = "winsock" }) ?? MemoryPool<byte>.Shared;
        WinsockConnectionListener listener;
        try
        {
            listener = new WinsockConnectionListener(listenSocket, memoryPool, _options, reuse, engine, _counters, _logger);
        }
        catch
        {
            // Nothing owns the engine's rings or the socket yet.
            foreach (var ring in engine.Rings ?? [])
            {
                ring.Dispose();
            }

            listenSocket.Dispose();
            throw;
        }

        listener.Start();
        return listener;
    }
}
